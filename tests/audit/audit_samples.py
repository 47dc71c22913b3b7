"""Identities and events the audit tests share: what an EU regional records in a round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.auth.identity import Identity, Tier

EU_REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
GLOBAL = Identity("GLOBAL", Tier.GLOBAL, "global-1")
POLICY = "sha256:" + "ab" * 32  # as jurisfed.policy prints a policy fingerprint


def silo(name: str, jurisdiction: str = "EU") -> Identity:
    return Identity(jurisdiction, Tier.SILO, name)


def round_events(round_number: int, silos: int = 3) -> list[AuditEvent]:
    """What an EU regional records in one round: contract, registrations, updates, a denial, the send."""
    events = [
        AuditEvent(
            EventKind.CONTRACT_DECISION,
            actor=EU_REGIONAL,
            jurisdiction="EU",
            round_number=round_number,
            subject=GLOBAL,
            policy_hash=POLICY,
            decision=Decision.ALLOW,
            rule="eu-contract-check",
            digests={"contract": f"{round_number:064x}"},
            details={Detail.CODE_VERSION: "0.1.0", Detail.DP_EPSILON: 0.5},
        )
    ]
    for index in range(silos):
        events.append(
            AuditEvent(
                EventKind.UPDATE_RECEIVED,
                actor=EU_REGIONAL,
                jurisdiction="EU",
                round_number=round_number,
                subject=silo(f"hospital-{index}"),
                policy_hash=POLICY,
                digests={"update": f"{round_number * 100 + index:064x}"},
                details={Detail.EXAMPLE_COUNT: 100 + index},
            )
        )
    events.append(
        AuditEvent(
            EventKind.POLICY_DECISION,
            actor=EU_REGIONAL,
            jurisdiction="EU",
            round_number=round_number,
            subject=silo("clinic-x"),
            policy_hash=POLICY,
            decision=Decision.DENY,
            rule="per-silo-updates-stay-in-eu",
        )
    )
    events.append(
        AuditEvent(
            EventKind.AGGREGATE_SENT,
            actor=EU_REGIONAL,
            jurisdiction="EU",
            round_number=round_number,
            subject=GLOBAL,
            policy_hash=POLICY,
            digests={"aggregate": f"{round_number * 1000:064x}"},
            details={Detail.COHORT_SIZE: silos, Detail.COMPRESSION: "int8", Detail.DP_EPSILON: 0.5},
        )
    )
    return events


def edit_line(path: Path, index: int, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` in line `index` (0-based) of `path`, as an intruder with a text editor would."""
    lines = path.read_bytes().split(b"\n")
    assert old in lines[index], lines[index]
    lines[index] = lines[index].replace(old, new)
    path.write_bytes(b"\n".join(lines))


def rewrite_lines(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    """Apply `change` to the complete lines of `path` and write them back."""
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in change(lines)))
