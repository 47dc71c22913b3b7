"""Every metric jurisfed exposes: its name, kind, unit, labels and meaning, and how tiers record it.

`INSTRUMENTS` is the whole list (docs/observability.md documents it, and a test keeps the two
in step); `TierMetrics` is the only way tiers record them. Labels are coarse by construction:
their values come from the enums below, policy rule ids, metric names and jurisdiction codes,
never a silo id or a host name, so the metrics may be scraped or exported beyond the
jurisdiction. The meter provider admits only the labels listed here (`views`), so a label
added by mistake is dropped before any reader sees it.

Names are Prometheus names; OpenTelemetry instrument names are the same, except that
Prometheus adds ``_total`` to counters. Units are UCUM, as OpenTelemetry wants them.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Final, TypeVar

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from jurisfed.policy.model import Decision


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Hop(enum.StrEnum):
    SILO_REGIONAL = "silo_regional"
    REGIONAL_GLOBAL = "regional_global"


class Direction(enum.StrEnum):
    SENT = "sent"
    RECEIVED = "received"


class DropoutReason(enum.StrEnum):
    """Why a participant selected for a round did not count in it."""

    DEADLINE = "deadline"  # no update before the round's deadline
    DISCONNECTED = "disconnected"  # the upload broke off (cancelled, connection lost)
    REFUSED = "refused"  # the update was refused: malformed, badly signed, over its limits
    QUARANTINED = "quarantined"  # the update was an outlier, or its sender is quarantined
    INELIGIBLE = "ineligible"  # excluded by the contract's eligibility rules
    POLICY = "policy"  # a residency policy refused the contribution


class RoundOutcome(enum.StrEnum):
    COMMITTED = "committed"  # regional: aggregate forwarded; global: checkpoint committed
    ROLLED_BACK = "rolled_back"  # global: a gate failed, the previous checkpoint stays
    ABORTED = "aborted"  # no quorum by the deadline, or the contract was refused


@dataclass(frozen=True)
class Instrument:
    name: str  # the Prometheus name without a counter's "_total"
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] = ()  # histogram bucket upper bounds

    @property
    def prometheus_name(self) -> str:
        return f"{self.name}_total" if self.kind is Kind.COUNTER else self.name


ROUND_DURATION = Instrument(
    "jurisfed_round_duration_seconds",
    Kind.HISTOGRAM,
    "s",
    ("outcome",),
    "Time from a round's start to its close, by outcome (regional: local round; global: whole round)",
    (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ROUND_SELECTED = Instrument(
    "jurisfed_round_selected",
    Kind.GAUGE,
    "{participant}",
    (),
    "Participants asked to take part in the last closed round (regional: silos; global: jurisdictions)",
)
ROUND_PARTICIPANTS = Instrument(
    "jurisfed_round_participants",
    Kind.GAUGE,
    "{participant}",
    (),
    "Participants whose contribution counted in the last closed round (regional: silos; "
    "global: jurisdictions)",
)
DROPOUTS = Instrument(
    "jurisfed_dropouts",
    Kind.COUNTER,
    "{participant}",
    ("reason",),
    "Selected participants that did not count in their round, by reason",
)
BYTES = Instrument(
    "jurisfed_bytes",
    Kind.COUNTER,
    "By",
    ("hop", "direction"),
    "Bytes of model data moved by this process (serialized messages plus gRPC framing), by hop and direction",
)
UPDATE_NORM = Instrument(
    "jurisfed_update_norm",
    Kind.HISTOGRAM,
    "1",
    (),
    "L2 norm of each model update received, before clipping (non-finite norms are not recorded)",
    (0.001, 0.01, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100, 1000),
)
CLIPPED_FRACTION = Instrument(
    "jurisfed_clipped_fraction",
    Kind.GAUGE,
    "1",
    (),
    "Fraction of the last round's updates that norm clipping scaled down (0 to 1)",
)
EVAL_VALUE = Instrument(
    "jurisfed_eval_value",
    Kind.GAUGE,
    "1",
    ("metric", "jurisdiction"),
    "Evaluation of the model after the last merge, on the probe set of `jurisdiction` "
    "(GLOBAL: the global probe set)",
)
EVAL_DELTA = Instrument(
    "jurisfed_eval_delta",
    Kind.GAUGE,
    "1",
    ("metric", "jurisdiction"),
    "Change of the evaluation from the previous committed model to the last merged one",
)
PRIVACY_EPSILON_SPENT = Instrument(
    "jurisfed_privacy_epsilon_spent",
    Kind.GAUGE,
    "1",
    ("jurisdiction",),
    "Differential privacy epsilon spent over the policy's accounting period, per jurisdiction",
)
PRIVACY_EPSILON_LIMIT = Instrument(
    "jurisfed_privacy_epsilon_limit",
    Kind.GAUGE,
    "1",
    ("jurisdiction",),
    "Epsilon the jurisdiction's policy allows per accounting period",
)
PRIVACY_DELTA_SPENT = Instrument(
    "jurisfed_privacy_delta_spent",
    Kind.GAUGE,
    "1",
    ("jurisdiction",),
    "Differential privacy delta spent over the policy's accounting period, per jurisdiction",
)
QUARANTINES = Instrument(
    "jurisfed_quarantines",
    Kind.COUNTER,
    "{participant}",
    (),
    "Participants put in quarantine for an outlier update",
)
QUARANTINE_REMEDIATION = Instrument(
    "jurisfed_quarantine_remediation_seconds",
    Kind.HISTOGRAM,
    "s",
    (),
    "Time from a participant's quarantine to its readmission",
    (60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400),
)
POLICY_DECISIONS = Instrument(
    "jurisfed_policy_decisions",
    Kind.COUNTER,
    "{decision}",
    ("decision", "rule"),
    "Residency policy decisions taken by this process, by decision (allow, deny) and deciding rule id",
)

INSTRUMENTS: Final[tuple[Instrument, ...]] = (
    ROUND_DURATION,
    ROUND_SELECTED,
    ROUND_PARTICIPANTS,
    DROPOUTS,
    BYTES,
    UPDATE_NORM,
    CLIPPED_FRACTION,
    EVAL_VALUE,
    EVAL_DELTA,
    PRIVACY_EPSILON_SPENT,
    PRIVACY_EPSILON_LIMIT,
    PRIVACY_DELTA_SPENT,
    QUARANTINES,
    QUARANTINE_REMEDIATION,
    POLICY_DECISIONS,
)

METER_NAME = "jurisfed"

_JURISDICTION = re.compile(r"[A-Z0-9]{2,16}")
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def views() -> list[View]:
    """One view per instrument: only its documented labels, and its histogram buckets."""
    result = []
    for instrument in INSTRUMENTS:
        aggregation = (
            ExplicitBucketHistogramAggregation(instrument.buckets)
            if instrument.kind is Kind.HISTOGRAM
            else None
        )
        result.append(
            View(
                instrument_name=instrument.name,
                meter_name=METER_NAME,
                attribute_keys=set(instrument.labels),
                aggregation=aggregation,
            )
        )
    return result


class TierMetrics:
    """What a tier records, in its own words; each method names the metrics it moves."""

    def __init__(self, meter: Meter) -> None:
        self._round_duration = meter.create_histogram(**_args(ROUND_DURATION))
        self._round_selected = meter.create_gauge(**_args(ROUND_SELECTED))
        self._round_participants = meter.create_gauge(**_args(ROUND_PARTICIPANTS))
        self._dropouts = meter.create_counter(**_args(DROPOUTS))
        self._bytes = meter.create_counter(**_args(BYTES))
        self._update_norm = meter.create_histogram(**_args(UPDATE_NORM))
        self._clipped_fraction = meter.create_gauge(**_args(CLIPPED_FRACTION))
        self._eval_value = meter.create_gauge(**_args(EVAL_VALUE))
        self._eval_delta = meter.create_gauge(**_args(EVAL_DELTA))
        self._epsilon_spent = meter.create_gauge(**_args(PRIVACY_EPSILON_SPENT))
        self._epsilon_limit = meter.create_gauge(**_args(PRIVACY_EPSILON_LIMIT))
        self._delta_spent = meter.create_gauge(**_args(PRIVACY_DELTA_SPENT))
        self._quarantines = meter.create_counter(**_args(QUARANTINES))
        self._remediation = meter.create_histogram(**_args(QUARANTINE_REMEDIATION))
        self._policy_decisions = meter.create_counter(**_args(POLICY_DECISIONS))

    def round_closed(
        self, *, outcome: RoundOutcome, duration_s: float, selected: int, participants: int
    ) -> None:
        """jurisfed_round_duration_seconds, jurisfed_round_selected, jurisfed_round_participants."""
        if not (duration_s >= 0 and selected >= 0 and participants >= 0):
            raise ValueError("round durations and participant counts are never negative")
        self._round_duration.record(duration_s, {"outcome": outcome.value})
        self._round_selected.set(selected)
        self._round_participants.set(participants)

    def dropout(self, reason: DropoutReason, count: int = 1) -> None:
        """jurisfed_dropouts_total{reason}."""
        self._dropouts.add(_non_negative(count, "dropout count"), {"reason": reason.value})

    def bytes_moved(self, hop: Hop, direction: Direction, n: int) -> None:
        """jurisfed_bytes_total{hop, direction}; `n` as `jurisfed.wire.metering.Meter` counts it."""
        self._bytes.add(_non_negative(n, "bytes"), {"hop": hop.value, "direction": direction.value})

    def update_norm(self, norm: float) -> None:
        """jurisfed_update_norm; a NaN or infinite norm is skipped (its update is quarantined)."""
        if math.isfinite(norm):
            self._update_norm.record(_non_negative(norm, "an update norm"))

    def clipped_fraction(self, fraction: float) -> None:
        """jurisfed_clipped_fraction."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"a clipped fraction is between 0 and 1, not {fraction}")
        self._clipped_fraction.set(fraction)

    def evaluated(self, *, metric: str, value: float, delta: float, jurisdiction: str) -> None:
        """jurisfed_eval_value and jurisfed_eval_delta{metric, jurisdiction}."""
        labels = {"metric": _metric_name(metric), "jurisdiction": _jurisdiction(jurisdiction)}
        self._eval_value.set(value, labels)
        self._eval_delta.set(delta, labels)

    def privacy_spent(self, *, jurisdiction: str, epsilon: float, delta: float, epsilon_limit: float) -> None:
        """jurisfed_privacy_epsilon_spent, _epsilon_limit and _delta_spent{jurisdiction}."""
        labels = {"jurisdiction": _jurisdiction(jurisdiction)}
        self._epsilon_spent.set(_non_negative(epsilon, "epsilon"), labels)
        self._epsilon_limit.set(_non_negative(epsilon_limit, "an epsilon limit"), labels)
        self._delta_spent.set(_non_negative(delta, "delta"), labels)

    def quarantined(self) -> None:
        """jurisfed_quarantines_total."""
        self._quarantines.add(1)

    def readmitted(self, quarantined_for_s: float) -> None:
        """jurisfed_quarantine_remediation_seconds: how long the participant was in quarantine."""
        self._remediation.record(_non_negative(quarantined_for_s, "a quarantine duration"))

    def policy_decision(self, decision: Decision) -> None:
        """jurisfed_policy_decisions_total{decision, rule}."""
        labels = {"decision": "allow" if decision.allowed else "deny", "rule": decision.rule_id}
        self._policy_decisions.add(1, labels)


def _args(instrument: Instrument) -> dict[str, str]:
    return {"name": instrument.name, "unit": instrument.unit, "description": instrument.description}


N = TypeVar("N", int, float)


def _non_negative(value: N, what: str) -> N:
    if not value >= 0:
        raise ValueError(f"{what} is never negative, not {value}")
    return value


def _jurisdiction(code: str) -> str:
    if not _JURISDICTION.fullmatch(code):
        raise ValueError(f"jurisdiction label {code!r} must be a jurisdiction code such as EU or GLOBAL")
    return code


def _metric_name(name: str) -> str:
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"metric label {name!r} must be a short lowercase name such as accuracy or loss")
    return name
