"""The global's acceptance gates: a candidate model against the last committed one, before a commit.

With a probe set (`probe_set` in the configuration: an .npz of `features` and `labels` the
global may hold) every gate of the round's contract is evaluated, and the probe accuracy and
cross-entropy of the candidate are kept as the round's metrics; without one, only the gates
that look at the weights alone (finite_weights, update_norm). Plans that need a probe set are
refused before they start (plans.py), so no configured gate is ever skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jurisfed.errors import ConfigError
from jurisfed.gates import GateCheck, GateConfig, evaluate_gates, evaluate_weight_gates
from jurisfed.modeling.examples import LabelledExamples, load_examples
from jurisfed.modeling.mlp import Mlp
from jurisfed.rounds import CheckResult
from jurisfed.tensors import Weights


@dataclass(frozen=True)
class Verdict:
    checks: tuple[CheckResult, ...]  # the gates, then the metrics
    update_norm: float
    accuracy: float | None  # of the candidate on the probe set, if there is one
    accuracy_delta: float | None  # candidate minus committed

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks if check.is_gate)

    @property
    def summary(self) -> str:
        gates = [check for check in self.checks if check.is_gate]
        failed = [check for check in gates if not check.passed]
        if not failed:
            return f"all {len(gates)} gates passed"
        return "gates failed: " + " ".join(check.sentence for check in failed)


@dataclass(frozen=True)
class Acceptance:
    model: Mlp | None
    probe: LabelledExamples | None

    @classmethod
    def load(cls, model: Mlp | None, probe_path: Path | None) -> Acceptance:
        """The gates of a global running `model`, with the probe set in `probe_path` if given."""
        if probe_path is None:
            return cls(model, None)
        if model is None:
            raise ConfigError("probe_set: evaluating a probe set needs an MLP architecture")
        probe = load_examples(probe_path, setting="probe_set", input_dim=model.input_dim)
        return cls(model, probe)

    @property
    def has_probe_set(self) -> bool:
        return self.probe is not None

    def judge(self, config: GateConfig, candidate: Weights, committed: Weights) -> Verdict:
        if self.model is None or self.probe is None:
            gates, norm = evaluate_weight_gates(config, candidate, committed)
            metrics = [
                CheckResult("update_norm", norm, f"the round changes the model by an L2 norm of {norm:.4g}")
            ]
            return Verdict((*map(_result, gates), *metrics), norm, None, None)
        report = evaluate_gates(config, self.model, candidate, committed, self.probe)
        examples = report.probe_examples
        metrics = [
            CheckResult(
                "probe_accuracy",
                report.candidate_accuracy,
                f"the candidate classifies {report.candidate_accuracy:.4f} of {examples} probe examples "
                f"correctly; the last committed model {report.committed_accuracy:.4f}",
            ),
            CheckResult(
                "probe_loss",
                report.candidate_loss,
                f"probe cross-entropy {report.candidate_loss:.4f}; the last committed model "
                f"{report.committed_loss:.4f}",
            ),
            CheckResult(
                "update_norm",
                report.update_norm,
                f"the round changes the model by an L2 norm of {report.update_norm:.4g}",
            ),
        ]
        return Verdict(
            (*map(_result, report.checks), *metrics),
            report.update_norm,
            report.candidate_accuracy,
            report.candidate_accuracy - report.committed_accuracy,
        )


def _result(check: GateCheck) -> CheckResult:
    return CheckResult(str(check.name), check.value, check.sentence, check.threshold, check.passed)
