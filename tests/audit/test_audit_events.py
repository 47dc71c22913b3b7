"""Audit events hold decisions and digests, never payloads; records round-trip through one canonical
line, and their hashed (sealed) form hides node names behind salted commitments."""

from __future__ import annotations

import datetime
import json

import pytest
from audit_samples import EU_REGIONAL, POLICY, round_events, silo

from jurisfed.audit.events import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    Decision,
    EventKind,
    MalformedRecord,
    canonical_json,
    node_commitment,
)
from jurisfed.errors import InvalidInput

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def event(**changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "kind": EventKind.UPDATE_RECEIVED,
        "actor": EU_REGIONAL,
        "jurisdiction": "EU",
        "round_number": 3,
        "subject": silo("hospital-a"),
        "policy_hash": POLICY,
        "digests": {"update": "0" * 64},
        "details": {"example_count": 120},
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def test_a_record_round_trips_through_its_canonical_line() -> None:
    for original in round_events(2):
        record = AuditRecord.seal(7, NOW, GENESIS, original)
        line = record.to_line()

        assert line == canonical_json(json.loads(line))
        assert b"\n" not in line
        parsed = AuditRecord.from_line(line)
        assert parsed == record
        assert parsed.leaf_hash() == record.leaf_hash()


def test_the_hashed_form_hides_node_names_behind_salted_commitments() -> None:
    record = AuditRecord.seal(0, NOW, GENESIS, event())
    sealed = canonical_json(record.sealed())

    assert b"hospital-a" not in sealed
    assert b"eu-1" not in sealed
    assert b'"jurisdiction":"EU"' in sealed  # where a node is stays visible and provable
    assert record.subject_salt is not None
    assert node_commitment("hospital-a", record.subject_salt).encode() in sealed
    # The same silo in another record gets an unrelated commitment: records cannot be linked by it.
    other = AuditRecord.seal(1, NOW, GENESIS, event())
    assert other.sealed()["subject"] != record.sealed()["subject"]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"digests": {"update": b"raw tensor bytes"}}, "never the payload"),
        ({"digests": {"update": "abc"}}, "64 lowercase hex"),
        ({"details": {"silo": "jurisfed://EU/silo/hospital-b"}}, "names a node"),
        ({"details": {"weights": [0.1, 0.2]}}, "string, number or boolean"),
        ({"details": {"epsilon": float("nan")}}, "finite"),
        ({"details": {"Bad Key": 1}}, "key"),
        ({"details": {f"k{i}": i for i in range(40)}}, "at most"),
        ({"jurisdiction": "eu"}, "jurisdiction"),
        ({"round_number": -1}, "round"),
        ({"policy_hash": "v1"}, "policy_hash"),
        ({"kind": EventKind.POLICY_DECISION}, "decision"),
        ({"kind": EventKind.POLICY_DECISION, "decision": Decision.DENY}, "rule"),
        ({"kind": EventKind.GATE, "decision": Decision.ALLOW}, "decision"),
        ({"actor": "jurisfed://EU/regional/eu-1"}, "Identity"),
    ],
)
def test_events_refuse_payloads_and_malformed_fields(changes: dict[str, object], complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        event(**changes)


def test_policy_hashes_read_as_policies_print_them() -> None:
    assert event(policy_hash="cd" * 32).policy_hash == "sha256:" + "cd" * 32
    assert event(policy_hash=POLICY).policy_hash == POLICY


def test_event_mappings_are_frozen_copies() -> None:
    details = {"example_count": 1}
    made = event(details=details)
    details["example_count"] = 2

    assert made.details["example_count"] == 1
    with pytest.raises(TypeError):
        made.details["example_count"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda line: line.replace(b'"seq":0', b'"seq": 0'), "canonical"),
        (lambda line: line[:-1], "JSON"),
        (lambda line: line.replace(b'"v":1', b'"v":2'), "version"),
        (lambda line: line.replace(b'"kind":"update_received"', b'"kind":"coffee_break"'), "coffee_break"),
        (lambda line: line.replace(b'"round":3,', b'"round":3,"extra":1,'), "unknown keys"),
        (lambda line: line.replace(b'"time":"2026-03-01T12:00:00.123456Z"', b'"time":"yesterday"'), "time"),
    ],
)
def test_malformed_lines_are_refused_with_a_reason(mutate: object, complaint: str) -> None:
    line = AuditRecord.seal(0, NOW, GENESIS, event()).to_line()

    with pytest.raises(MalformedRecord, match=complaint):
        AuditRecord.from_line(mutate(line))  # type: ignore[operator]
