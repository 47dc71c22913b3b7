"""FedPer: the tensors of a jurisdiction's local layers stay home; the rest come from the global.

A layer is named as in the model spec (`head`, `hidden_2`); its tensors are `<layer>/kernel`
and `<layer>/bias`. A regional opens each round on the global model with its own values of the
local layers put back (`with_local_layers`), and exports only the shared part (`shared_part`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, Weights


def local_tensor_names(spec: ModelSpec, layers: Iterable[str]) -> tuple[str, ...]:
    """The spec's tensors that belong to `layers`, in spec order; InvalidInput for an unknown layer."""
    wanted = frozenset(layers)
    present = {tensor.name.partition("/")[0] for tensor in spec.tensors}
    unknown = sorted(wanted - present)
    if unknown:
        raise InvalidInput(f"layers {unknown} are not part of model {spec.architecture!r}")
    return tuple(t.name for t in spec.tensors if t.name.partition("/")[0] in wanted)


def with_local_layers(
    base: Mapping[str, FloatArray], own: Mapping[str, FloatArray] | None, local_names: Iterable[str]
) -> Weights:
    """`base` with the tensors in `local_names` taken from `own` (unchanged when `own` is None)."""
    names = frozenset(local_names)
    if own is None:
        return {name: values.copy() for name, values in base.items()}
    return {name: (own[name] if name in names else values).copy() for name, values in base.items()}


def shared_part(weights: Mapping[str, FloatArray], local_names: Iterable[str]) -> Weights:
    """What may leave the jurisdiction: every tensor except the local ones."""
    names = frozenset(local_names)
    return {name: values for name, values in weights.items() if name not in names}
