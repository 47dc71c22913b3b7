"""Acceptance gates: before a round commits, the global evaluates the candidate model on a probe
set it is allowed to hold and compares it with the last committed checkpoint.

A round contract carries a `GateConfig` (which checks, which thresholds); `evaluate_gates`
returns a `GateReport` with one `GateCheck` per check (name, value, threshold, passed, and a
sentence for `round status` and the audit log). Fail closed: a candidate with NaN or infinite
weights fails whatever else is configured, and a value that cannot be computed fails its check.

Checks (each off unless configured, except `finite_weights`):
  finite_weights   every weight of the candidate is a finite number
  accuracy_drop    committed accuracy - candidate accuracy <= max_accuracy_drop
  min_accuracy     candidate accuracy >= min_accuracy
  loss_increase    candidate cross-entropy - committed cross-entropy <= max_loss_increase
  update_norm      L2 norm of (candidate - committed), all tensors together, <= max_update_norm

A global without a probe set can still run `evaluate_weight_gates`: finite_weights and
update_norm, which look at the weights alone.

Numpy only (jurisfed.modeling.mlp computes the logits), so the global needs no TensorFlow.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from jurisfed.aggregation.process import global_l2_norm
from jurisfed.config import setting
from jurisfed.errors import InvalidInput
from jurisfed.modeling.evaluation import accuracy_and_loss
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.tensors import Weights, subtract


@dataclass(frozen=True)
class GateConfig:
    max_accuracy_drop: float | None = setting(
        "largest fall in probe accuracy from the last committed checkpoint, as a fraction "
        "(0.02: two points); empty: not checked",
        None,
    )
    min_accuracy: float | None = setting(
        "lowest probe accuracy a candidate may have; empty: not checked", None
    )
    max_loss_increase: float | None = setting(
        "largest rise in probe cross-entropy from the last committed checkpoint; empty: not checked", None
    )
    max_update_norm: float | None = setting(
        "largest L2 norm of the change to the model in one round; empty: not checked", None
    )

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "min_accuracy"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction of the probe set, from 0 to 1; got {value}")
        if self.max_loss_increase is not None and not 0.0 <= self.max_loss_increase < math.inf:
            raise ValueError(f"max_loss_increase must be a non-negative number, got {self.max_loss_increase}")
        if self.max_update_norm is not None and not 0.0 < self.max_update_norm < math.inf:
            raise ValueError(f"max_update_norm must be a positive number, got {self.max_update_norm}")


class GateName(enum.StrEnum):
    FINITE_WEIGHTS = "finite_weights"
    ACCURACY_DROP = "accuracy_drop"
    MIN_ACCURACY = "min_accuracy"
    LOSS_INCREASE = "loss_increase"
    UPDATE_NORM = "update_norm"


@dataclass(frozen=True)
class GateCheck:
    name: GateName
    value: float
    threshold: float
    passed: bool
    sentence: str


@dataclass(frozen=True)
class GateReport:
    checks: tuple[GateCheck, ...]
    candidate_accuracy: float
    committed_accuracy: float
    candidate_loss: float
    committed_loss: float
    update_norm: float
    probe_examples: int

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(check for check in self.checks if not check.passed)

    @property
    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.checks)} gates passed on {self.probe_examples} probe examples"
        return "gates failed: " + " ".join(check.sentence for check in self.failures)


def evaluate_gates(
    config: GateConfig, model: Mlp, candidate: Weights, committed: Weights, probe: LabelledExamples
) -> GateReport:
    """Evaluate `candidate` against `committed` (the last committed checkpoint) on `probe`."""
    spec = model.spec()
    spec.check(candidate)
    spec.check(committed)
    if probe.features.shape[1] != model.input_dim:
        raise InvalidInput(
            f"probe features have {probe.features.shape[1]} columns; the model takes {model.input_dim}"
        )
    candidate_accuracy, candidate_loss = accuracy_and_loss(model, candidate, probe)
    committed_accuracy, committed_loss = accuracy_and_loss(model, committed, probe)
    update_norm = _update_norm(candidate, committed)
    checks = [_finite_check(candidate)]
    if config.max_accuracy_drop is not None:
        drop = committed_accuracy - candidate_accuracy
        checks.append(
            _at_most(
                GateName.ACCURACY_DROP,
                drop,
                config.max_accuracy_drop,
                f"probe accuracy {candidate_accuracy:.4f} against {committed_accuracy:.4f} for the last "
                f"committed checkpoint: a fall of {drop:.4f}",
            )
        )
    if config.min_accuracy is not None:
        passed = candidate_accuracy >= config.min_accuracy
        checks.append(
            GateCheck(
                GateName.MIN_ACCURACY,
                candidate_accuracy,
                config.min_accuracy,
                passed,
                f"min_accuracy: probe accuracy {candidate_accuracy:.4f} is "
                f"{'at least' if passed else 'below'} the minimum {config.min_accuracy:.4f}, "
                f"so it {'passes' if passed else 'fails'}.",
            )
        )
    if config.max_loss_increase is not None:
        rise = candidate_loss - committed_loss
        checks.append(
            _at_most(
                GateName.LOSS_INCREASE,
                rise,
                config.max_loss_increase,
                f"probe cross-entropy {candidate_loss:.4f} against {committed_loss:.4f} for the last "
                f"committed checkpoint: a rise of {rise:.4f}",
            )
        )
    if config.max_update_norm is not None:
        checks.append(_norm_check(config.max_update_norm, update_norm))
    return GateReport(
        tuple(checks),
        candidate_accuracy,
        committed_accuracy,
        candidate_loss,
        committed_loss,
        update_norm,
        len(probe.labels),
    )


def evaluate_weight_gates(
    config: GateConfig, candidate: Weights, committed: Weights
) -> tuple[tuple[GateCheck, ...], float]:
    """The gates that need no probe set (finite_weights, and update_norm if configured), and the
    update norm: what a global without a probe set can check. Any check that needs one is left out."""
    if committed.keys() != candidate.keys():
        raise InvalidInput("candidate and committed models must have the same tensors")
    update_norm = _update_norm(candidate, committed)
    checks = [_finite_check(candidate)]
    if config.max_update_norm is not None:
        checks.append(_norm_check(config.max_update_norm, update_norm))
    return tuple(checks), update_norm


def _finite_check(candidate: Weights) -> GateCheck:
    finite = all(bool(np.isfinite(values).all()) for values in candidate.values())
    return GateCheck(
        GateName.FINITE_WEIGHTS,
        1.0 if finite else 0.0,
        1.0,
        finite,
        "finite_weights: every candidate weight is a finite number, so it passes."
        if finite
        else "finite_weights: the candidate holds NaN or infinite weights, so it fails.",
    )


def _update_norm(candidate: Weights, committed: Weights) -> float:
    try:
        return global_l2_norm(subtract(candidate, committed))
    except InvalidInput:
        return math.inf


def _norm_check(threshold: float, update_norm: float) -> GateCheck:
    return _at_most(
        GateName.UPDATE_NORM,
        update_norm,
        threshold,
        f"the round changes the model by an L2 norm of {update_norm:.4g}",
    )


def _at_most(name: GateName, value: float, threshold: float, finding: str) -> GateCheck:
    passed = value <= threshold  # False for NaN: a value that cannot be computed fails
    verdict = "passes" if passed else "fails"
    return GateCheck(
        name,
        value,
        threshold,
        passed,
        f"{name}: {finding}; at most {threshold:.4g} is allowed, so it {verdict}.",
    )
