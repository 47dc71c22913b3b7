"""How well a model's weights fit labelled examples, in numpy: accuracy and cross-entropy.

One loss for the whole system: the global's acceptance gates (jurisfed.gates) judge a candidate
by it, and the poisoning screen (jurisfed.aggregation.diagnostics) judges each update by the loss
of the round's base plus that update on the examples the tier holds (`MlpProbe`, which the tier
builds when a round opens and hands the screen as its ProbeLoss).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.tensors import FloatArray, Weights

log = logging.getLogger("jurisfed.modeling")


def accuracy_and_loss(
    model: Mlp, weights: Mapping[str, FloatArray], examples: LabelledExamples
) -> tuple[float, float]:
    """Accuracy and mean softmax cross-entropy (natural log) of `weights` on `examples`."""
    with np.errstate(all="ignore"):  # a poisoned model may overflow; its loss is then NaN or inf
        logits = model.logits(dict(weights), examples.features).astype(np.float64)
        accuracy = float(np.mean(np.argmax(logits, axis=1) == examples.labels))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1))
        picked = shifted[np.arange(len(examples.labels)), examples.labels]
        loss = float(np.mean(log_norm - picked))
    return accuracy, loss


def model_fitting(architecture: str, examples: LabelledExamples, *, unable: str) -> Mlp | None:
    """The MLP named `architecture` if `examples` fit its input; None otherwise, logged as a warning
    `unable` (what the tier cannot do for this round) with the reason."""
    try:
        model = Mlp.parse(architecture)
    except ValueError as error:
        log.warning(unable, extra={"why": str(error)})
        return None
    if examples.features.shape[1] != model.input_dim:
        features = examples.features.shape[1]
        why = f"the examples have {features} features; {architecture} takes {model.input_dim}"
        log.warning(unable, extra={"why": why})
        return None
    return model


@dataclass(frozen=True)
class MlpProbe:
    """The cross-entropy of (the round's `base` + an update) on examples a tier may hold."""

    model: Mlp
    examples: LabelledExamples
    base: Weights

    @classmethod
    def of(cls, architecture: str, examples: LabelledExamples | None, base: Weights) -> MlpProbe | None:
        """The probe for a round of `architecture` from `base`; None when the tier holds no examples,
        or (logged) when they do not fit the architecture, so the screen leaves its loss term out."""
        if examples is None:
            return None
        model = model_fitting(architecture, examples, unable="probe loss not evaluated")
        return None if model is None else cls(model, examples, base)

    @property
    def size(self) -> int:
        return len(self.examples.labels)

    def loss(self, update: Mapping[str, FloatArray]) -> float:
        """Cross-entropy of base + `update` (NaN or inf if the sum overflows)."""
        with np.errstate(all="ignore"):
            model = {
                name: (values + np.asarray(update[name], dtype=np.float32))
                for name, values in self.base.items()
            }
        return accuracy_and_loss(self.model, model, self.examples)[1]
