"""What a regional serves its silos as their jurisdiction's model, when it holds a validation set.

Without one, the personalized model of a round is the jurisdiction's own model: the round's
base (global shared layers, its own local layers, FedPer) plus its silos' aggregate. With a
validation set (`validation_set` in the configuration: held-out examples of this
jurisdiction the regional may hold), each committed round also mixes that model with the
global model the round started from, APFL/Ditto style (jurisfed.personalization.interpolation):
the mixing weight is the one most accurate on the validation set, and the grid includes 0, so
the served model is never worse there than the global one. The jurisdiction's own model stays
the round's checkpoint (the next round takes its local layers from it); the served mixture is
a blob of its own, recorded here with the weight and both validation accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from jurisfed.errors import ConfigError, JurisfedError
from jurisfed.modeling.evaluation import model_fitting
from jurisfed.modeling.examples import LabelledExamples, load_examples
from jurisfed.personalization.interpolation import MixingChoice, Personalized, personalize
from jurisfed.store.sqlite import SqliteStore
from jurisfed.tensors import Weights


class ServedModelsUnavailable(JurisfedError):
    status = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class ServedModel:
    round: int
    blob_sha256: str
    mixing_weight: float  # the jurisdiction model's share; 0: the global model as it is
    validation_accuracy: float
    global_validation_accuracy: float


class ServedModels(SqliteStore):
    """The mixture served for each committed round, in the regional's state file."""

    WHAT = "served personalized models"
    UNAVAILABLE = ServedModelsUnavailable
    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS personalization_served (
            round INTEGER PRIMARY KEY,
            blob_sha256 TEXT NOT NULL,
            mixing_weight REAL NOT NULL CHECK (mixing_weight BETWEEN 0 AND 1),
            validation_accuracy REAL NOT NULL,
            global_validation_accuracy REAL NOT NULL)""",
    )

    def record(self, round_number: int, blob_sha256: str, choice: MixingChoice) -> None:
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO personalization_served VALUES (?, ?, ?, ?, ?)",
                (
                    round_number,
                    blob_sha256,
                    choice.mixing_weight,
                    choice.validation_accuracy,
                    choice.global_validation_accuracy,
                ),
            )

    def served(self, round_number: int) -> ServedModel | None:
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT round, blob_sha256, mixing_weight, validation_accuracy, global_validation_accuracy "
                "FROM personalization_served WHERE round = ?",
                (round_number,),
            ).fetchone()
        return None if row is None else ServedModel(*row)


@dataclass(frozen=True)
class Personalizer:
    validation: LabelledExamples
    min_gain: float = 0.0

    @classmethod
    def load(cls, path: Path, *, min_gain: float) -> Personalizer:
        """The validation set in `path` (an .npz of `features` and `labels`); ConfigError otherwise."""
        if not 0.0 <= min_gain < 1.0:
            raise ConfigError(f"personalization_min_gain must be in [0, 1), got {min_gain}")
        return cls(load_examples(path, setting="validation_set"), min_gain)

    def mix(self, architecture: str, global_model: Weights, own_model: Weights) -> Personalized | None:
        """The served mixture of `own_model` and `global_model`; None (logged) when the validation
        set does not fit the round's architecture, so the round still commits its own model."""
        arch = model_fitting(architecture, self.validation, unable="cannot personalize by validation")
        if arch is None:
            return None
        return personalize(arch, global_model, own_model, self.validation, min_gain=self.min_gain)
