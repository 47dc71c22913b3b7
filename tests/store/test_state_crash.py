"""SIGKILL in the middle of writes. A real process writes round state and blobs as fast as it
can and is killed at arbitrary moments, several times over, each time resuming from what it
finds; and a process is killed at a fixed point inside a transaction that moves the head.
Afterwards nothing half-written is visible (a commit or rollback is wholly there or not at
all; a listed blob holds its whole content), everything the process was told is written is
there, and no contribution was ever reported new twice."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState

REPO = Path(__file__).resolve().parents[2]
SILOS = 5

# A tier's round loop as the aggregators run it: blob first, then the record, then (in a real
# tier) the fold; a restart resumes the round in flight, checking every recorded blob.
TIER = """
import hashlib, sys
from pathlib import Path
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState

state, blobs = TierState(Path(sys.argv[1])), BlobStore(Path(sys.argv[2]))
silos = int(sys.argv[3])

def say(*words):
    print(*words, flush=True)

def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()

resumed = state.resume()
number, closing = resumed.next_round, False
if resumed.in_flight is not None:
    number, closing = resumed.in_flight.number, resumed.in_flight.state is RoundStatus.CLOSING
    for contribution in resumed.contributions:
        blobs.get(contribution.content_sha256)  # raises unless the whole update is there
    say("RESUMED", number, len(resumed.contributions), resumed.in_flight.state)
while True:
    if not closing:  # a round that was closing takes no more contributions: finish the close
        head = state.head()
        state.open_round(number, sha(f"contract {number}"), head.blob_sha256 if head else sha("initial"))
        for i in range(silos):
            update = blobs.put(f"update {number} {i} ".encode() * 4000)
            recorded = state.record_contribution(number, f"silo-{i}", f"key-{number}-{i}", update, i + 1)
            say("NEW" if recorded.new else "DUPLICATE", number, i)
        state.begin_closing(number)
    model = blobs.put(f"model after round {number} ".encode() * 8000)
    say("MODEL", number)
    state.close_round(number, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(model, "mlp-test"))
    say("COMMITTED", number)
    number, closing = number + 1, False
"""

BLOB_WRITER = """
import os, sys
from pathlib import Path
from jurisfed.store.blobs import BlobStore

blobs = BlobStore(Path(sys.argv[1]))
while True:
    print(blobs.put(os.urandom(512 * 1024)), flush=True)
"""


def run_and_kill(
    script: str,
    arguments: list[str],
    *,
    enough: Callable[[list[str]], bool],
    rng: random.Random,
    pause_s: float = 0.02,
) -> list[str]:
    """Run `script`, read its output until `enough` says so, wait up to `pause_s`, SIGKILL it;
    the lines read. Each write here takes milliseconds (fsync), so the kill lands inside one."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    read: list[str] = []
    try:
        assert child.stdout is not None
        while not enough(read):
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                pytest.fail(f"the writer exited early ({child.wait()}): {child.stderr.read()[-2000:]}")
            read.append(line.strip())
        time.sleep(rng.uniform(0.0, pause_s))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return read


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.timeout(120)
def test_round_state_killed_mid_write_shows_only_whole_writes_and_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    path, blob_dir = tmp_path / "state.sqlite", tmp_path / "blobs"
    rng = random.Random(5)
    said: list[str] = []
    for cycle in range(6):
        # Kill mid-round on even cycles (after a contribution, more to come), and inside the
        # commit on odd ones (after the model's blob is written, as close_round runs).
        target = rng.randint(3, 12)
        closing = cycle % 2 == 1

        def enough(read: list[str], target: int = target, closing: bool = closing) -> bool:
            if len(read) < target:
                return False
            if closing:
                return read[-1].startswith("MODEL")
            return read[-1].startswith("NEW") and not read[-1].endswith(f" {SILOS - 1}")

        arguments = [str(path), str(blob_dir), str(SILOS)]
        said += run_and_kill(TIER, arguments, enough=enough, rng=rng, pause_s=0.03 if closing else 0.02)

    state, blobs = TierState(path), BlobStore(blob_dir)
    rounds = state.rounds()
    checkpoints = {c.version: c for c in state.checkpoints()}

    # A restart resumed the round in flight, and the retries of what it had recorded were
    # answered as duplicates, exactly those and in order.
    resumptions = [i for i, line in enumerate(said) if line.startswith("RESUMED")]
    assert any(int(said[i].split()[2]) > 0 for i in resumptions)
    for i in resumptions:
        _, number_text, recorded_text, round_state = said[i].split()
        number, recorded = int(number_text), int(recorded_text)
        if round_state == "closing":  # it takes no more contributions; the close is finished
            assert said[i + 1 : i + 3] == [f"MODEL {number}", f"COMMITTED {number}"]
            continue
        assert said[i + 1 : i + 1 + recorded] == [f"DUPLICATE {number} {silo}" for silo in range(recorded)]
        assert said[i + 1 + recorded] == (
            # every silo was recorded before the kill: the resumed round goes straight to its close
            f"NEW {number} {recorded}" if recorded < SILOS else f"MODEL {number}"
        )

    # Everything the writer was told is durable is there.
    for line in said:
        kind, *numbers = line.split()
        if kind in ("NEW", "DUPLICATE"):
            number, silo = int(numbers[0]), int(numbers[1])
            [recorded] = [c for c in state.contributions(number) if c.participant == f"silo-{silo}"]
            assert recorded.idempotency_key == f"key-{number}-{silo}"
            assert recorded.example_count == silo + 1
            assert blobs.get(recorded.content_sha256) == f"update {number} {silo} ".encode() * 4000
        elif kind == "COMMITTED":
            assert state.round(int(numbers[0])).state is RoundStatus.COMMITTED

    # A commit is wholly there or not at all: round state, checkpoint and head move together.
    committed = [r.number for r in rounds if r.state is RoundStatus.COMMITTED]
    assert committed, "the writer never committed a round; give it more lines"
    assert sorted(checkpoints) == committed
    for previous, number in zip([None, *committed], committed, strict=False):
        checkpoint = checkpoints[number]
        assert (checkpoint.committed_round, checkpoint.parent_version) == (number, previous)
        assert state.round(number).model_sha256 == checkpoint.blob_sha256
        assert blobs.get(checkpoint.blob_sha256) == f"model after round {number} ".encode() * 8000
    head = state.head()
    assert head is not None
    assert head.version == committed[-1]

    # Nothing lost across restarts: every committed round holds all its silos' contributions,
    # and at most the last round is still in flight.
    for number in committed:
        assert sorted(c.participant for c in state.contributions(number)) == [
            f"silo-{i}" for i in range(SILOS)
        ]
    in_flight = [r for r in rounds if r.state.in_flight]
    assert len(in_flight) <= 1
    assert all(r.number == rounds[-1].number for r in in_flight)
    assert [r.number for r in rounds] == list(range(1, len(rounds) + 1))

    # Nothing counted twice: the store called each contribution new at most once, so a tier
    # that folds only new contributions folded each exactly once.
    new = Counter(line for line in said if line.startswith("NEW"))
    assert max(new.values()) == 1


@pytest.mark.timeout(120)
def test_a_blob_writer_killed_mid_write_leaves_only_whole_blobs(tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    rng = random.Random(11)
    acknowledged: list[str] = []
    for _ in range(3):
        target = rng.randint(2, 8)
        acknowledged += run_and_kill(
            BLOB_WRITER, [str(blob_dir)], enough=lambda read, target=target: len(read) >= target, rng=rng
        )

    blobs = BlobStore(blob_dir)
    names = blobs.names()
    assert set(acknowledged) <= set(names)
    for name in names:
        data = blobs.get(name)  # BlobCorrupted if a torn write were visible under a real name
        assert len(data) == 512 * 1024
    leftovers = [p.name for p in blob_dir.iterdir() if p.name not in names]
    assert all(name.startswith(".") for name in leftovers)  # unfinished temporaries, never listed


# Stops the writer inside a transaction that moves the head (a commit or a rollback), after the
# head has moved and before the transaction commits, so the kill lands exactly there.
INSIDE = """
import hashlib, sys, time
from pathlib import Path
import jurisfed.store.tier_state as tier_state
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState

def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()

moved = tier_state.set_head
def move_then_hang(db, version):
    moved(db, version)
    print("INSIDE", flush=True)
    time.sleep(60)

state = TierState(Path(sys.argv[1]))
tier_state.set_head = move_then_hang
if sys.argv[2] == "commit":
    state.close_round(3, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(sha("m3"), "mlp-test"))
else:
    state.rollback(0, "back to the start")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", ["commit", "rollback"])
def test_a_kill_inside_a_head_moving_transaction_leaves_none_of_it(tmp_path: Path, operation: str) -> None:
    path = tmp_path / "state.sqlite"
    state = TierState(path)
    state.record_initial_checkpoint(sha("m0"), "mlp-test")
    for number in (1, 2):
        state.open_round(number, sha(f"contract {number}"), sha(f"m{number - 1}"))
        state.close_round(
            number,
            RoundStatus.COMMITTED,
            "committed",
            checkpoint=NewCheckpoint(sha(f"m{number}"), "mlp-test"),
        )
    if operation == "commit":
        state.open_round(3, sha("contract 3"), sha("m2"))
        state.record_contribution(3, "EU", "eu-3", sha("eu"), 10)
        state.begin_closing(3)
    before = (state.rounds(), state.checkpoints(), state.head(), state.rollbacks())

    assert run_and_kill(INSIDE, [str(path), operation], enough=bool, rng=random.Random(0)) == ["INSIDE"]

    after = TierState(path)
    assert (after.rounds(), after.checkpoints(), after.head(), after.rollbacks()) == before
    if operation == "commit":
        resumed = after.resume()
        assert resumed.in_flight is not None
        assert resumed.in_flight.state is RoundStatus.CLOSING
        assert [c.participant for c in resumed.contributions] == ["EU"]
