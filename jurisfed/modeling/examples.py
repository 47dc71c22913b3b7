"""Labelled examples an aggregator may hold: the global's probe set, a regional's validation set.

One shape for both: features [n, d] float32 and labels [n] int64, at least one example, read
from an .npz with arrays `features` and `labels` (no pickles). Which examples a tier may hold
is its policy's and its operator's decision; this module only reads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from jurisfed.errors import ConfigError, InvalidInput
from jurisfed.tensors import FloatArray

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LabelledExamples:
    features: FloatArray
    labels: IntArray

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.labels.ndim != 1:
            raise InvalidInput(
                f"labelled examples need features [n, d] and labels [n], got {self.features.shape} "
                f"and {self.labels.shape}"
            )
        if len(self.labels) == 0 or len(self.labels) != len(self.features):
            raise InvalidInput(
                f"labelled examples need as many labels as examples, at least one: got {len(self.features)} "
                f"examples and {len(self.labels)} labels"
            )


def load_examples(path: Path, *, setting: str, input_dim: int | None = None) -> LabelledExamples:
    """The examples in `path`; ConfigError naming `setting` (the configuration key) otherwise, also
    when they do not have `input_dim` features."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            examples = LabelledExamples(
                archive["features"].astype(np.float32), archive["labels"].astype(np.int64)
            )
    except (OSError, KeyError, ValueError, InvalidInput) as error:
        raise ConfigError(f"{setting} {path}: not an .npz with features and labels ({error})") from None
    if input_dim is not None and examples.features.shape[1] != input_dim:
        raise ConfigError(
            f"{setting} {path}: {examples.features.shape[1]} features; the model takes {input_dim}"
        )
    return examples
