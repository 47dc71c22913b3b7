"""The container health probe: a real mTLS server on port 0, asked through the gRPC health protocol."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, create_ca, issue
from jurisfed.healthcheck import ADDRESS_VARIABLE, TLS_DIR_VARIABLE, Verdict, main
from jurisfed.rpc.server import RunningServer, Service, serve

REGIONAL = Identity("EU", Tier.REGIONAL, "regional-eu")
PROBE_SERVICE = "jurisfed.test.Probe"


@pytest.fixture(scope="module")
def node_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The node's own certificate: the probe presents it to the server it runs beside."""
    return issue(pki, REGIONAL, tmp_path_factory.mktemp("regional-eu"))


@pytest.fixture
def server(node_tls: TlsFiles) -> Iterator[RunningServer]:
    handler = grpc.method_handlers_generic_handler(PROBE_SERVICE, {})
    probe = Service(PROBE_SERVICE, lambda s: s.add_generic_rpc_handlers((handler,)))
    with serve([probe], node_tls) as running:
        yield running


def probe(server: RunningServer, tls: TlsFiles, *extra: str) -> int:
    return main(
        ["--address", server.address, "--tls-dir", str(tls.cert.parent), "--timeout", "2", *extra], {}
    )


def test_serving_only_once_the_server_says_so(server: RunningServer, node_tls: TlsFiles) -> None:
    assert probe(server, node_tls) == Verdict.NOT_SERVING
    server.set_serving(True)
    assert probe(server, node_tls) == Verdict.SERVING
    assert probe(server, node_tls, "--service", PROBE_SERVICE) == Verdict.SERVING


def test_a_draining_server_is_not_ready_but_alive(server: RunningServer, node_tls: TlsFiles) -> None:
    server.set_serving(True)
    server.set_serving(False)  # what a server reports while it drains
    assert probe(server, node_tls) == Verdict.NOT_SERVING
    assert probe(server, node_tls, "--live") == Verdict.SERVING


def test_an_unknown_service_is_not_serving(server: RunningServer, node_tls: TlsFiles) -> None:
    server.set_serving(True)
    assert probe(server, node_tls, "--service", "jurisfed.v1.Nothing") == Verdict.NOT_SERVING


def test_a_stopped_server_gives_no_answer_even_to_the_liveness_probe(
    server: RunningServer, node_tls: TlsFiles
) -> None:
    server.set_serving(True)
    server.stop(grace_s=0)
    assert probe(server, node_tls) == Verdict.NO_ANSWER
    assert probe(server, node_tls, "--live") == Verdict.NO_ANSWER


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.set_serving(True)
    stranger = issue(create_ca(tmp_path / "other-ca"), REGIONAL, tmp_path / "stranger")
    assert probe(server, stranger) == Verdict.NO_ANSWER
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_the_server_name_can_differ_from_the_dialled_host(
    server: RunningServer, node_tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    server.set_serving(True)
    # The certificate names localhost and 127.0.0.1, not regional.example: refused unless overridden.
    assert probe(server, node_tls, "--server-name", "regional.example") == Verdict.NO_ANSWER
    assert probe(server, node_tls, "--server-name", "localhost") == Verdict.SERVING
    assert "SERVING" in capsys.readouterr().out


def test_wait_asks_again_until_the_server_is_serving(server: RunningServer, node_tls: TlsFiles) -> None:
    flip = threading.Timer(1.5, server.set_serving, args=(True,))
    flip.start()
    try:
        assert probe(server, node_tls, "--wait", "30") == Verdict.SERVING
    finally:
        flip.cancel()


def test_wait_gives_up_with_the_last_answer(server: RunningServer, node_tls: TlsFiles) -> None:
    started = time.monotonic()
    assert probe(server, node_tls, "--wait", "2") == Verdict.NOT_SERVING
    assert 1.0 <= time.monotonic() - started < 10


def test_missing_settings_and_files_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], {}) == Verdict.CANNOT_RUN
    assert ADDRESS_VARIABLE in capsys.readouterr().err
    environ = {ADDRESS_VARIABLE: "127.0.0.1:1", TLS_DIR_VARIABLE: str(tmp_path)}
    assert main([], environ) == Verdict.CANNOT_RUN
    assert str(tmp_path / "ca.crt") in capsys.readouterr().err


def test_the_module_runs_as_a_command_configured_by_the_environment(
    server: RunningServer, node_tls: TlsFiles
) -> None:
    server.set_serving(True)
    environ = {ADDRESS_VARIABLE: server.address, TLS_DIR_VARIABLE: str(node_tls.cert.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "jurisfed.healthcheck"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{server.address}: SERVING"
