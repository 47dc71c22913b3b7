"""Shared fixtures. TFF is imported inside its fixture, so only tests that use it pay its ~15 s import."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity
from jurisfed.auth.pki import create_ca
from jurisfed.policy.guard import PolicyGuard, load_tier_policy
from jurisfed.policy.signing import approve_file, generate_key_pair, load_private_key

# The example residency policies, signed by the demo approver whose public key is in keys/.
EXAMPLE_POLICIES = Path(__file__).resolve().parents[1] / "deploy" / "policies"

_WORKER = "worker_binary"
_WORKER_READY_S = 60
_WORKER_STOP_S = 10
# As TFF's own local C++ context: updates of a real model exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2_000_000_000),
    ("grpc.max_receive_message_length", 2_000_000_000),
]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One federation CA for the whole run; tests issue their node certificates from it."""
    return create_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="session")
def example_policies() -> Path:
    """deploy/policies: global.yaml, eu.yaml, in.yaml, us.yaml and keys/ (read only)."""
    return EXAMPLE_POLICIES


GuardFactory = Callable[[str, Identity, AuditSink], PolicyGuard]


@pytest.fixture(scope="session")
def example_guard() -> GuardFactory:
    """make(jurisdiction, actor, audit): a guard over that jurisdiction's example policy."""

    def make(jurisdiction: str, actor: Identity, audit: AuditSink) -> PolicyGuard:
        policy = load_tier_policy(
            EXAMPLE_POLICIES / f"{jurisdiction.lower()}.yaml", EXAMPLE_POLICIES / "keys"
        )
        return PolicyGuard(policy, actor, audit)

    return make


PolicyEdits = dict[str, Callable[[str], str]]
PolicySet = Callable[[Path, PolicyEdits], Path]


@pytest.fixture(scope="session")
def signed_policy_set(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    """make(directory, edits): the example policies with `edits` applied (file name -> text
    rewrite), each signed again by a test approver whose public key is directory/keys/."""
    key_dir = tmp_path_factory.mktemp("approver")
    generate_key_pair(key_dir / "approver.key.pem", key_dir / "approver.pem")
    private_key = load_private_key(key_dir / "approver.key.pem")

    def make(directory: Path, edits: PolicyEdits) -> Path:
        (directory / "keys").mkdir(parents=True)
        shutil.copy(key_dir / "approver.pem", directory / "keys" / "approver.pem")
        for source in EXAMPLE_POLICIES.glob("*.yaml"):
            text = source.read_text(encoding="utf-8")
            edited = edits.get(source.name, lambda t: t)(text)
            assert source.name not in edits or edited != text, f"edit of {source.name} changed nothing"
            (directory / source.name).write_text(edited, encoding="utf-8")
            approve_file(directory / source.name, private_key, "Test Approver")
        return directory

    return make


@pytest.fixture(scope="session")
def tff_cpp_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs TFF computations on its C++ runtime, whose `worker_binary` this session owns.

    TFF's default context starts the worker with our stdout/stderr and stops it only from a
    finalizer that does not run at interpreter exit, so the worker outlives pytest and holds CI
    pipes open. Here it writes to a log file, the kernel kills it if pytest dies (pdeathsig),
    and teardown stops and reaps it. Every test that runs a TFF computation must use this.
    """
    import tensorflow_federated as tff

    binary = Path(tff.__file__).parent / "data" / _WORKER
    port = _free_port()
    log_path = tmp_path_factory.mktemp("tff") / f"{_WORKER}.log"
    die_with_pytest = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*die_with_pytest, str(binary), f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    channel = grpc.insecure_channel(f"localhost:{port}", options=_CHANNEL_OPTIONS)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=_WORKER_READY_S)
        except grpc.FutureTimeoutError:
            pytest.fail(f"{_WORKER} did not start: {log_path.read_text(errors='replace')[-2000:]}")
        stub = tff.framework.RemoteExecutorGrpcStub(channel)

        def executor_for(cardinalities: tff.framework.CardinalitiesType) -> tff.framework.RemoteExecutor:
            executor = tff.framework.RemoteExecutor(stub)
            executor.set_cardinalities({tff.CLIENTS: 0, **cardinalities})
            return executor

        context = tff.framework.SyncExecutionContext(
            tff.framework.ResourceManagingExecutorFactory(executor_for),
            compiler_fn=tff.backends.native.desugar_and_transform_to_native,
            transform_args=tff.tensorflow.transform_args,
            transform_result=tff.tensorflow.transform_result,
        )
        with tff.framework.get_context_stack().install(context):
            yield
    finally:
        channel.close()
        worker.terminate()
        try:
            worker.wait(timeout=_WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, rather than hang CI, if a TFF worker was started outside `tff_cpp_context`."""
    strays = _own_workers()
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    if strays:
        print(f"\nkilled stray {_WORKER} {strays}: use the tff_cpp_context fixture", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _own_workers() -> list[int]:
    """Pids of `worker_binary` processes whose parent is this pytest process (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        command, fields = rest.rsplit(") ", 1)
        if command == _WORKER and int(fields.split()[1]) == os.getpid():
            pids.append(int(pid))
    return pids


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port: int = probe.getsockname()[1]
        return port
