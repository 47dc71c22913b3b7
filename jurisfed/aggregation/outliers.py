"""What a tier does with a screening rule's verdicts: quarantine, refuse, record, count.

Both aggregating tiers use it, the regional for its silos and the global for the
jurisdictions. When a round closes, `judged` takes the rule's diagnoses (intake.Folded): each
update's norm goes to jurisfed_update_norm, each outlier's sender is quarantined in the
QuarantineRegistry (the tier's state file) with the reason and score, audited (QUARANTINE,
decision deny) and counted (jurisfed_quarantines_total). A quarantined participant is refused
(`refuse_if_quarantined`) until an operator re-admits it with `jurisfed quarantine readmit`,
which writes the registry: the running tier reads the registry again at most every REFRESH_S
(so the re-admission holds within a second) and then audits the re-admission and records its
time to remediation (jurisfed_quarantine_remediation_seconds).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from jurisfed.aggregation.intake import Folded
from jurisfed.aggregation.process import flatten
from jurisfed.aggregation.quarantine import QuarantineEntry, QuarantineRegistry
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity
from jurisfed.errors import NotAllowed
from jurisfed.telemetry import Instrumentation

REFRESH_S = 1.0


class Quarantined(NotAllowed):
    """The sender is quarantined for an outlier update; an operator must re-admit it."""


def sentence(entry: QuarantineEntry) -> str:
    return (
        f"{entry.participant} is quarantined since round {entry.round} "
        f"({entry.quarantined_at:%Y-%m-%d %H:%M} UTC): {entry.reason} (score {entry.score:.3g}); "
        f"an operator must re-admit it (jurisfed quarantine readmit {entry.participant})"
    )


class OutlierHandling:
    def __init__(
        self,
        actor: Identity,
        registry: QuarantineRegistry,
        audit: AuditSink,
        instruments: Instrumentation,
        *,
        identity_of: Callable[[str], Identity],
        jurisdiction_of: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`actor`: the tier recording the events; `identity_of`: a participant's name -> its
        identity; `jurisdiction_of`: whose data a participant's quarantine concerns."""
        self.actor = actor
        self.registry = registry
        self.audit = audit
        self.instruments = instruments
        self.identity_of = identity_of
        self.jurisdiction_of = jurisdiction_of
        self._clock = clock
        self._lock = threading.Lock()
        self._looked_at = -math.inf
        self._active: dict[str, QuarantineEntry] = {}

    def active(self) -> dict[str, str]:
        """Every quarantined participant (read now), with the sentence that says why."""
        return {participant: sentence(entry) for participant, entry in self._current(fresh=True).items()}

    def refuse_if_quarantined(self, participant: str) -> None:
        entry = self._current().get(participant)
        if entry is not None:
            raise Quarantined(sentence(entry))

    def _current(self, *, fresh: bool = False) -> dict[str, QuarantineEntry]:
        """The open quarantines, read again (and new re-admissions audited) at most every
        REFRESH_S: an update stream costs no database read, a re-admission holds within a second."""
        with self._lock:
            if not fresh and self._clock() - self._looked_at < REFRESH_S:
                return self._active
        self.report_readmissions()
        active = {entry.participant: entry for entry in self.registry.active()}
        with self._lock:
            self._active, self._looked_at = active, self._clock()
        return active

    def judged(self, round_number: int, folded: Folded) -> dict[str, str]:
        """Record the round's diagnoses; the quarantined outliers with the sentence that says why."""
        quarantined = {}
        for diagnosis in folded.diagnoses:
            self.instruments.metrics.update_norm(diagnosis.norm)
            if not diagnosis.outlier:
                continue
            before = self.registry.open_entry(diagnosis.sender)
            entry = self.registry.quarantine(
                diagnosis.sender, round_number, diagnosis.reason, diagnosis.score
            )
            quarantined[diagnosis.sender] = sentence(entry)
            if before is not None:
                continue  # quarantined already (the round closed again after a restart)
            self.instruments.metrics.quarantined()
            self._record(
                diagnosis.sender,
                round_number=round_number,
                decision=Decision.DENY,
                details={Detail.REASON: diagnosis.reason[:900], "score": round(diagnosis.score, 6)},
            )
        with self._lock:
            self._looked_at = -math.inf  # read the new quarantines on the next check
        flat = flatten(folded.measurements)
        clipped = [value for key, value in flat.items() if key.endswith("clipped_count")]
        admitted = len(folded.diagnoses) - len(quarantined) if folded.diagnoses else None
        if clipped and admitted:
            self.instruments.metrics.clipped_fraction(min(1.0, clipped[0] / admitted))
        return quarantined

    def report_readmissions(self) -> None:
        """Audit and count the re-admissions operators made since the tier last looked."""
        for entry in self.registry.unreported_readmissions():
            if not self.registry.mark_reported(entry.id):
                continue
            remedied_s = entry.time_to_remediation_s or 0.0
            self.instruments.metrics.readmitted(remedied_s)
            self._record(
                entry.participant,
                round_number=entry.round,
                decision=Decision.ALLOW,
                details={
                    Detail.REASON: f"re-admitted by {entry.readmitted_by}: {entry.readmission_note}"[:900],
                    "time_to_remediation_s": round(remedied_s, 3),
                },
            )

    def _record(self, participant: str, **fields: object) -> None:
        self.audit.record(
            AuditEvent(
                kind=EventKind.QUARANTINE,
                actor=self.actor,
                jurisdiction=self.jurisdiction_of(participant),
                subject=self.identity_of(participant),
                **fields,  # type: ignore[arg-type]
            )
        )
