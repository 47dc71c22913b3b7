"""Evidence bundles: the JSON verifies against the signed log, silos of other jurisdictions stay
pseudonymous yet provably in the log, and any change to the bundle is caught."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_samples import EU_REGIONAL, round_events
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.errors import AuditIntegrityError
from jurisfed.audit.events import AuditRecord, Json
from jurisfed.audit.export import Selection, build_bundle, compare_with_log, verify_bundle
from jurisfed.audit.keys import create_signing_key
from jurisfed.audit.log import AuditLog
from jurisfed.audit.report import render_html
from jurisfed.errors import InvalidInput

ROUND_2 = list(range(7, 13))  # sequences of round 2 in write_log()
SECRET = b"k" * 32


def entries(bundle: Json) -> list[dict[str, Json]]:
    assert isinstance(bundle, dict)
    assert isinstance(bundle["entries"], list)
    return bundle["entries"]  # type: ignore[return-value]


def test_a_round_bundle_verifies_against_the_signed_log(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    key = [signing_key.public_key()]

    bundle = build_bundle(path, Selection(round_number=2), keys=key)
    report = verify_bundle(json.loads(json.dumps(bundle)), key)  # as read back from disk

    assert report.ok, report.problems
    assert report.key_pinned
    assert [e.sequence for e in report.entries] == ROUND_2
    assert {e.round_number for e in report.entries} == {2}
    assert report.checkpoint.size == 19
    assert compare_with_log(report, path, key) == []
    names = {e.subject.label for e in report.entries if e.subject is not None}
    assert "EU/silo/hospital-0" in names  # an EU audience sees EU silo names


def test_silos_are_pseudonymous_outside_their_jurisdiction_and_still_proven(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    key = [signing_key.public_key()]

    bundle = build_bundle(
        path, Selection(first_sequence=1, last_sequence=12), audience="IN", pseudonym_key=SECRET
    )
    text = json.dumps(bundle)
    report = verify_bundle(bundle, key)
    html = render_html(report)

    assert report.ok, report.problems
    for name in ("hospital-0", "hospital-1", "clinic-x"):
        assert name not in text
        assert name not in html
    assert "eu-1" in text
    assert "global-1" in text
    silos = [e.subject for e in report.entries if e.subject is not None and e.subject.tier == "silo"]
    assert all(s.node is None and s.jurisdiction == "EU" and s.pseudonym for s in silos)
    # hospital-0 took part in rounds 1 and 2: one pseudonym for both, another for each other silo.
    assert len({s.label for s in silos}) == 4
    assert len(silos) == 8
    again = build_bundle(path, Selection(round_number=2), audience="IN", pseudonym_key=SECRET)
    assert {s.label for s in silos} >= {
        e.subject.label for e in verify_bundle(again, key).entries if e.subject and e.subject.tier == "silo"
    }


def test_a_changed_bundle_does_not_verify(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    key = [signing_key.public_key()]
    bundle = build_bundle(path, Selection(round_number=2), keys=key)

    edited = copy.deepcopy(bundle)
    entries(edited)[4]["record"]["decision"] = "allow"  # type: ignore[index]
    assert (
        "record 11: not in the signed log (its inclusion proof fails)" in verify_bundle(edited, key).problems
    )

    holed = copy.deepcopy(bundle)
    del entries(holed)[2]
    assert any("has a hole" in p for p in verify_bundle(holed, key).problems)

    renamed = copy.deepcopy(bundle)
    entries(renamed)[1]["disclosed"]["subject"]["node"] = "hospital-9"  # type: ignore[index]
    assert any("not the one that was logged" in p for p in verify_bundle(renamed, key).problems)

    resigned = copy.deepcopy(bundle)
    resigned["checkpoint"]["size"] = 18  # type: ignore[index]
    assert any("signature is invalid" in p for p in verify_bundle(resigned, key).problems)


def test_a_bundle_that_leaves_out_records_of_its_round_is_caught_by_the_log(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    key = [signing_key.public_key()]
    bundle = build_bundle(path, Selection(round_number=2), keys=key)
    del entries(bundle)[-1]

    report = verify_bundle(bundle, key)

    assert report.ok  # every record left in is genuine and contiguous ...
    assert compare_with_log(report, path, key) == [  # ... but the log has one more for round 2
        "the log has records of round 2 the bundle leaves out: [12]"
    ]


def test_a_bundle_against_another_key_or_log_fails(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = write_log()
    other_path = write_log(name="other.jsonl")
    bundle = build_bundle(path, Selection(round_number=1))
    report = verify_bundle(bundle, [signing_key.public_key()])

    assert report.ok
    assert compare_with_log(report, other_path, [signing_key.public_key()]) == [
        f"the bundle's checkpoint (19 records) is not a state of {other_path}"
    ]
    stranger = create_signing_key(tmp_path / "stranger.key")
    assert (
        verify_bundle(bundle, [stranger.public_key()])
        .problems[0]
        .startswith("the checkpoint is signed by key")
    )


def test_time_ranges_select_records(write_log: Callable[..., Path]) -> None:
    path = write_log()
    records = [AuditRecord.from_line(line) for line in path.read_bytes().splitlines()]
    since, until = records[3].time, records[9].time

    bundle = build_bundle(path, Selection(since=since, until=until))

    assert [e["sequence"] for e in entries(bundle)] == [
        r.sequence for r in records if since <= r.time <= until
    ]
    late = records[-1].time + datetime.timedelta(days=1)
    with pytest.raises(InvalidInput, match="no records"):
        build_bundle(path, Selection(since=late))


def test_export_refuses_a_tampered_log_or_unsigned_records(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    path.write_bytes(path.read_bytes().replace(b'"decision":"deny"', b'"decision":"allow"', 1))
    with pytest.raises(AuditIntegrityError, match="cannot give evidence"):
        build_bundle(path, Selection(round_number=1), keys=[signing_key.public_key()])

    fresh = path.with_name("fresh.jsonl")
    log = AuditLog.open(fresh, EU_REGIONAL, signing_key, checkpoint_every=1000)
    for event in round_events(4):
        log.record(event)
    with pytest.raises(InvalidInput, match=r"newest signed checkpoint covers only records 0\.\.0"):
        build_bundle(fresh, Selection(round_number=4))
    log.close()
    assert build_bundle(fresh, Selection(round_number=4))["round"] == 4
    with pytest.raises(InvalidInput, match="either one round or a range"):
        Selection()


def test_the_html_report_is_self_contained_and_says_what_was_proven(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    report = verify_bundle(build_bundle(path, Selection(round_number=2)), [signing_key.public_key()])

    html = render_html(report)

    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html
    assert "http://" not in html
    assert "https://" not in html
    for text in (
        "Verified.",
        "Who was involved",
        "hospital-0",
        "Residency policy refused clinic-x",
        "per-silo-updates-stay-in-eu",
        "Combined update of 3 participants sent to global-1",
        "&epsilon; 0.5",
        "All 3 individual model updates recorded here were received by an aggregator in the silo",
        "jurisfed audit verify-bundle",
    ):
        assert text in html, text

    broken = verify_bundle(build_bundle(path, Selection(round_number=2)), [])
    assert "NOT verified" in render_html(broken)
