"""A whole federation of real processes over real gRPC with mutual TLS on localhost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jurisfed.audit.events import AuditEvent, AuditRecord, EventKind
from jurisfed.audit.keys import load_signing_key
from jurisfed.audit.log import AuditLog
from jurisfed.auth.identity import Identity, Tier
from jurisfed.demo.partition import DEFAULT_ALPHA
from jurisfed.demo.runner import DEFAULT_POLICIES as EXAMPLE_POLICIES
from jurisfed.demo.runner import DemoSettings, run_demo
from jurisfed.modeling.mlp import DIGITS_MLP
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import TierState

pytestmark = pytest.mark.slow


def _two_silo_cohorts(text: str) -> str:
    return text.replace("min_cohort_silos: 5", "min_cohort_silos: 2").replace(
        "min_cohort_silos: 3", "min_cohort_silos: 2"
    )


def test_two_jurisdictions_two_silos_two_rounds_train_the_model(
    tmp_path: Path, signed_policy_set: Callable[[Path, dict[str, Callable[[str], str]]], Path]
) -> None:
    # The example policies, except that an aggregate of two silos may leave EU and US.
    policies = signed_policy_set(
        tmp_path / "policies", {"eu.yaml": _two_silo_cohorts, "us.yaml": _two_silo_cohorts}
    )
    lines: list[str] = []
    settings = DemoSettings(
        out_dir=tmp_path / "run",
        rounds=2,
        jurisdictions=("EU", "US"),
        silos_per_jurisdiction=2,
        alpha=DEFAULT_ALPHA,
        seed=1,
        round_deadline_s=120.0,
        start_timeout_s=300.0,
        policies=policies,
    )
    results = run_demo(settings, lines.append)  # raises if any process exits badly

    assert [r.outcome for r in results.rounds] == ["committed", "committed"]
    assert all(r.jurisdictions == ("EU", "US") for r in results.rounds)

    spec = DIGITS_MLP.spec()
    state = TierState(settings.out_dir / "global" / "state.sqlite")
    blobs = BlobStore(settings.out_dir / "global" / "blobs")
    checkpoints = state.checkpoints()
    assert [c.version for c in checkpoints] == [0, 1, 2]
    initial, final = (blobs.get_weights(checkpoints[v].blob_sha256, spec) for v in (0, 2))
    assert any(not np.array_equal(initial[name], final[name]) for name in initial)

    with np.load(settings.out_dir / "data" / "test.npz") as test:
        features, labels = test["features"].astype(np.float32), test["labels"]
    initial_accuracy = DIGITS_MLP.accuracy(initial, features, labels)
    assert results.rounds[-1].global_accuracy > initial_accuracy + 0.2
    assert results.rounds[-1].global_accuracy > results.rounds[0].global_accuracy

    for jurisdiction in ("EU", "US"):
        personalized = TierState(settings.out_dir / f"regional-{jurisdiction}" / "state.sqlite")
        assert [c.version for c in personalized.checkpoints()] == [1, 2]

    # Only compressed aggregates crossed to the global: int8 is a quarter of float32 plus framing.
    last = results.rounds[-1]
    assert 0 < last.regional_to_global_bytes * 3.9 <= last.regional_to_global_float32_bytes
    assert last.silo_to_regional_bytes >= last.silo_to_regional_float32_bytes
    assert any("round 2/2 committed" in line for line in lines)

    # Every aggregating tier left a signed audit log that verifies offline.
    for tier_dir in ("global", "regional-EU", "regional-US"):
        log = settings.out_dir / tier_dir / "audit.log.jsonl"
        verified = subprocess.run(
            [sys.executable, "-m", "jurisfed", "audit", "verify", str(log)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # Round 1 is one trace across the processes of every tier: the global's round span, each
    # regional's round under it, and each silo's training and upload under its regional.
    spans = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in (settings.out_dir / "spans").glob("*.jsonl")
    }
    [round_one] = [
        s
        for s in spans["global"]
        if s["name"] == "jurisfed.round" and s["attributes"]["jurisfed.round.number"] == 1
    ]
    trace_id = round_one["context"]["trace_id"]
    in_trace = {
        (process, s["name"])
        for process, lines in spans.items()
        for s in lines
        if s["context"]["trace_id"] == trace_id
    }
    for process, name in [
        ("global", "jurisfed.round"),
        ("global", "jurisfed.v1.GlobalAggregator/SubmitAggregate"),
        ("regional-EU", "jurisfed.regional.round"),
        ("regional-US", "jurisfed.regional.aggregate"),
        ("regional-EU", "jurisfed.v1.RegionalAggregator/SubmitUpdate"),
        ("eu-silo-1", "jurisfed.silo.train"),
        ("us-silo-2", "jurisfed.silo.upload"),
    ]:
        assert (process, name) in in_trace, (process, name)
    # What the aggregators export names no silo and no node (the policies strip them).
    for process in ("global", "regional-EU", "regional-US"):
        exported = (settings.out_dir / "spans" / f"{process}.jsonl").read_text()
        for identifying in ("silo-", "jurisfed://", "127.0.0.1"):
            assert identifying not in exported, (process, identifying)

    log_lines = (settings.out_dir / "global" / "audit.log.jsonl").read_bytes().splitlines()
    kinds = [AuditRecord.from_line(line).event.kind for line in log_lines]
    assert kinds.count(EventKind.COMMIT) == 2
    assert kinds.count(EventKind.AGGREGATE_RECEIVED) == 4
    for regional in ("regional-EU", "regional-US"):  # each committed its own model of both rounds too
        lines = (settings.out_dir / regional / "audit.log.jsonl").read_bytes().splitlines()
        regional_kinds = [AuditRecord.from_line(line).event.kind for line in lines]
        assert regional_kinds.count(EventKind.COMMIT) == 2, regional


def _verify(log: Path, *witnesses: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jurisfed", "audit", "verify", str(log)]
    for witness in witnesses:
        command += ["--witness", str(witness)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_forked_or_truncated_regional_log_is_caught_by_the_globals_witness_record(
    tmp_path: Path, signed_policy_set: Callable[[Path, dict[str, Callable[[str], str]]], Path]
) -> None:
    policies = signed_policy_set(tmp_path / "policies", {"eu.yaml": _two_silo_cohorts})
    settings = DemoSettings(
        out_dir=tmp_path / "run",
        rounds=1,
        jurisdictions=("EU",),
        silos_per_jurisdiction=2,
        alpha=DEFAULT_ALPHA,
        seed=2,
        round_deadline_s=120.0,
        start_timeout_s=300.0,
        policies=policies,
    )
    run_demo(settings, lambda line: None)
    out = settings.out_dir
    eu_log, global_witness = out / "regional-EU" / "audit.log.jsonl", out / "global" / "witness.jsonl"
    regional_witness = out / "regional-EU" / "witness.jsonl"
    # Each side holds the other's newest checkpoint, and both logs agree with it.
    assert _verify(eu_log, global_witness).returncode == 0
    assert _verify(out / "global" / "audit.log.jsonl", regional_witness).returncode == 0

    # A fork: the EU log rewritten from scratch with EU's own key. On its own it verifies ...
    eu = Identity("EU", Tier.REGIONAL, "regional-eu")
    key = load_signing_key(out / "pki" / "EU-regional-regional-eu" / "audit" / "audit.key")
    witnessed = len(eu_log.read_bytes().splitlines())
    forked = tmp_path / "forked" / "audit.log.jsonl"
    forked.parent.mkdir()
    rewritten = AuditLog.open(forked, eu, key)
    for _ in range(witnessed + 2):
        rewritten.record(AuditEvent(kind=EventKind.KEY_CHANGE, actor=eu, jurisdiction="EU"))
    rewritten.close()
    shutil.copy(out / "regional-EU" / "audit.log.jsonl.pub", forked.parent / "audit.log.jsonl.pub")
    assert _verify(forked).returncode == 0
    # ... but not against what the global witnessed.
    caught = _verify(forked, global_witness)
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "witness" in (caught.stdout + caught.stderr).lower()

    # Truncation: the tail of the EU log dropped after the global witnessed it.
    lines = eu_log.read_bytes().splitlines(keepends=True)
    eu_log.write_bytes(b"".join(lines[: len(lines) // 2]))
    truncated = _verify(eu_log, global_witness)
    assert truncated.returncode == 1, truncated.stdout + truncated.stderr


def test_the_demo_refuses_to_clear_a_directory_it_did_not_make(tmp_path: Path) -> None:
    from jurisfed.errors import ConfigError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    settings = DemoSettings(precious, 1, ("EU",), 1, DEFAULT_ALPHA, 0, 10.0, 10.0, EXAMPLE_POLICIES)
    with pytest.raises(ConfigError, match="was not made by `jurisfed demo`"):
        run_demo(settings, print)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_results_json_holds_bytes_as_sent_and_as_float32(tmp_path: Path) -> None:
    from jurisfed.demo.report import DemoResults, RoundResult

    results = DemoResults(1, ("EU",))
    results.rounds.append(
        RoundResult(1, "committed", ("EU",), 0.9, {"EU": 0.9}, {"EU": 0.95}, 10, 8, 3, 12, 1.5)
    )
    results.write_json(tmp_path / "results.json")
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["rounds"][0]["bytes"]["regional_to_global"] == {"sent": 3, "float32_equivalent": 12}
    assert "pers@EU" in results.table()
