"""A tier's handling of a screen's verdicts: the outlier's sender is quarantined with the reason and
audited once, refused until re-admitted in the registry (as `jurisfed quarantine readmit` does from
another process), and the re-admission is audited with its time to remediation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jurisfed.aggregation.diagnostics import screen_batch
from jurisfed.aggregation.intake import Folded
from jurisfed.aggregation.outliers import REFRESH_S, OutlierHandling, Quarantined
from jurisfed.aggregation.process import RuleState
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.audit.events import Decision, EventKind
from jurisfed.audit.sink import MemoryAuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.telemetry import Instrumentation
from jurisfed.tensors import ModelSpec, TensorSpec

SPEC = ModelSpec("test", (TensorSpec("w", (6,)),))
REGIONAL = Identity("EU", Tier.REGIONAL, "regional-eu")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def folded_round() -> Folded:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=6).astype(np.float32)
    updates = {f"s{i}": {"w": direction + rng.normal(scale=0.1, size=6).astype(np.float32)} for i in range(4)}
    updates["attacker"] = {"w": -10 * direction}
    diagnoses = screen_batch(SPEC, updates)
    return Folded({"w": direction}, RuleState(), {}, tuple(diagnoses.values()))


def handling(tmp_path: Path, audit: MemoryAuditSink, clock: Clock) -> OutlierHandling:
    return OutlierHandling(
        REGIONAL,
        QuarantineRegistry(tmp_path / "state.sqlite", clock=lambda: clock.now),
        audit,
        Instrumentation.off(),
        identity_of=lambda silo: Identity("EU", Tier.SILO, silo),
        jurisdiction_of=lambda silo: "EU",
        clock=clock,
    )


def test_an_outlier_is_quarantined_refused_until_readmitted_and_both_are_audited(tmp_path: Path) -> None:
    audit, clock = MemoryAuditSink(), Clock()
    outliers = handling(tmp_path, audit, clock)
    quarantined = outliers.judged(4, folded_round())
    assert list(quarantined) == ["attacker"]
    assert quarantined["attacker"].startswith("attacker is quarantined since round 4")
    outliers.judged(4, folded_round())  # the round closed again after a restart: no second event
    with pytest.raises(Quarantined, match="jurisfed quarantine readmit attacker"):
        outliers.refuse_if_quarantined("attacker")
    outliers.refuse_if_quarantined("s1")

    # An operator re-admits it from the command line, i.e. another writer of the same file.
    two_minutes_later = clock.now + 120.0
    command_line = QuarantineRegistry(tmp_path / "state.sqlite", clock=lambda: two_minutes_later)
    command_line.readmit("attacker", "alice", "fixed")
    with pytest.raises(Quarantined):
        outliers.refuse_if_quarantined("attacker")  # within REFRESH_S the tier still refuses
    clock.now += REFRESH_S
    outliers.refuse_if_quarantined("attacker")
    assert outliers.active() == {}

    events = [e for e in audit.events() if e.kind is EventKind.QUARANTINE]
    assert [(e.decision, e.subject) for e in events] == [
        (Decision.DENY, Identity("EU", Tier.SILO, "attacker")),
        (Decision.ALLOW, Identity("EU", Tier.SILO, "attacker")),
    ]
    assert "cosine" in str(events[0].details["reason"])
    assert events[1].details["time_to_remediation_s"] == pytest.approx(120.0)
    assert "re-admitted by alice: fixed" in str(events[1].details["reason"])
    outliers.active()
    assert len([e for e in audit.events() if e.kind is EventKind.QUARANTINE]) == 2  # audited once
