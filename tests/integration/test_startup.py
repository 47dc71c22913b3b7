"""Starting and stopping the real processes: `python -m regional | global_agg | silo`.

What an operator sees: `--help` tells every key, a misconfiguration exits 2 with one JSON log
line saying why, and a healthy process reports where it serves, answers the standard health
check over mTLS and exits 0 soon after SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from global_agg.config import GlobalConfig
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.auth.provisioning import Provisioner
from jurisfed.auth.tokens import Role
from jurisfed.config import describe
from jurisfed.rpc.channel import open_authenticated_channel, wait_until_serving
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, regional_pb2, regional_pb2_grpc
from regional.config import RegionalConfig
from silo.config import SiloConfig

START_TIMEOUT_S = 60.0  # generous: CI machines are slow and busy
EXIT_TIMEOUT_S = 15.0
# A process told to stop drains in-flight calls for its 5 s grace period, then exits.
PROMPT_EXIT_S = 8.0
HELP_TIMEOUT_S = 180.0  # the silo imports TensorFlow first, which takes a minute on a busy machine
CONFIG_ERROR_EXIT = 2
EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"


def environment() -> dict[str, str]:
    """This environment without JURISFED_* overrides, which would change what is tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JURISFED_")}
    return {**env, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def json_logs(stderr: str) -> list[dict[str, object]]:
    """The structured log entries a process wrote (other libraries may add plain lines)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def run_to_exit(
    module: str, *args: str, timeout_s: float = START_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=environment(),
        timeout=timeout_s,
        check=False,
    )


def policy_keys(jurisdiction: str) -> dict[str, object]:
    """The config keys that point a node of `jurisdiction` at its example policy."""
    keys: dict[str, object] = {
        "policy": str(EXAMPLE_POLICIES / f"{jurisdiction.lower()}.yaml"),
        "policy_keys": str(EXAMPLE_POLICIES / "keys"),
    }
    if jurisdiction == "GLOBAL":
        keys["member_policies"] = [str(EXAMPLE_POLICIES / f"{j}.yaml") for j in ("eu", "in", "us")]
    return keys


def security_keys(tmp_path: Path) -> dict[str, object]:
    """Token and revocation keys a config must name; never read by a node refused earlier."""
    return {
        "token": {"key": str(tmp_path / "token.key"), "kid": "node-1"},
        "token_keys": str(tmp_path / "token-keys"),
        "crl": str(tmp_path / "crl.pem"),
    }


def write_config(path: Path, values: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def tls_keys(files: TlsFiles) -> dict[str, str]:
    return {"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)}


def startup_failure(module: str, config: Path) -> tuple[int, str]:
    """Run `module` with `config`; its exit code and the message of its ERROR log entry."""
    finished = run_to_exit(module, "--config", str(config))
    errors = [entry for entry in json_logs(finished.stderr) if entry["level"] == "ERROR"]
    assert len(errors) == 1, finished.stderr
    assert "Traceback" not in finished.stderr
    return finished.returncode, str(errors[0]["message"])


# --- --help --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "config", "prefix"),
    [
        ("regional", RegionalConfig, "regional"),
        ("global_agg", GlobalConfig, "global"),
        # The silo imports TensorFlow before it parses its arguments: ~15 s.
        pytest.param("silo", SiloConfig, "silo", marks=pytest.mark.slow),
    ],
)
def test_help_lists_every_configuration_key(module: str, config: type, prefix: str) -> None:
    finished = run_to_exit(module, "--help", timeout_s=HELP_TIMEOUT_S)
    assert finished.returncode == 0, finished.stderr
    assert f"usage: python -m {module}" in finished.stdout
    assert "--config CONFIG" in finished.stdout
    assert describe(config, prefix) in finished.stdout
    assert f"tls.cert (Path, required; $JURISFED_{prefix.upper()}_TLS_CERT)" in finished.stdout


# --- refusing to start ---------------------------------------------------------------------


def test_a_regional_whose_certificate_names_another_jurisdiction_refuses_to_start(
    pki: Path, tmp_path: Path
) -> None:
    us_certificate = issue(pki, Identity("US", Tier.REGIONAL, "regional-us"), tmp_path / "tls")
    config = write_config(
        tmp_path / "regional.yaml",
        {
            "jurisdiction": "EU",
            "global_address": "127.0.0.1:1",
            "state_dir": str(tmp_path / "state"),
            "tls": tls_keys(us_certificate),
            **policy_keys("EU"),
            **security_keys(tmp_path),
        },
    )
    code, message = startup_failure("regional", config)
    assert code == CONFIG_ERROR_EXIT
    assert message.startswith("cannot start: ")
    assert "names jurisfed://US/regional/regional-us" in message
    assert "this process needs jurisfed://EU/regional/<node>" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda text: text.replace("min_cohort_silos: 5", "min_cohort_silos: 1", 1),
            "was changed after it was approved",
        ),
        (lambda text: text[: text.index("approvals:")], "no approval"),
    ],
    ids=["tampered", "unsigned"],
)
def test_a_tampered_or_unsigned_policy_stops_a_regional_at_start_up(
    pki: Path, tmp_path: Path, change: Callable[[str], str], expected: str
) -> None:
    policy = tmp_path / "eu.yaml"
    policy.write_text(change((EXAMPLE_POLICIES / "eu.yaml").read_text()))
    files = issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "tls")
    config = write_config(
        tmp_path / "regional.yaml",
        {
            "jurisdiction": "EU",
            "global_address": "127.0.0.1:1",
            "state_dir": str(tmp_path / "state"),
            "tls": tls_keys(files),
            **policy_keys("EU"),
            **security_keys(tmp_path),
            "policy": str(policy),
        },
    )
    code, message = startup_failure("regional", config)
    assert code == CONFIG_ERROR_EXIT
    assert message.startswith("cannot start: residency policy not usable: ")
    assert expected in message, message
    assert not (tmp_path / "state").exists()  # it stopped before writing anything


def test_a_missing_config_key_refuses_to_start_and_names_it(pki: Path, tmp_path: Path) -> None:
    files = issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "tls")
    config = write_config(
        tmp_path / "regional.yaml",
        {"jurisdiction": "EU", "state_dir": str(tmp_path / "state"), "tls": tls_keys(files)},
    )
    code, message = startup_failure("regional", config)
    assert code == CONFIG_ERROR_EXIT
    assert "config key global_address is required (or set $JURISFED_REGIONAL_GLOBAL_ADDRESS)" in message


def test_a_global_with_a_silo_certificate_refuses_to_start(pki: Path, tmp_path: Path) -> None:
    silo_certificate = issue(pki, Identity("EU", Tier.SILO, "hospital-a"), tmp_path / "tls")
    config = write_config(
        tmp_path / "global.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "tls": tls_keys(silo_certificate),
            "listen": "127.0.0.1:0",
            **policy_keys("GLOBAL"),
            **{k: v for k, v in security_keys(tmp_path).items() if k != "token"},
        },
    )
    code, message = startup_failure("global_agg", config)
    assert code == CONFIG_ERROR_EXIT
    assert (
        "names jurisfed://EU/silo/hospital-a; this process needs jurisfed://GLOBAL/global/<node>" in message
    )
    assert not (tmp_path / "state").exists()  # nothing written by a process that did not start


# --- serving and stopping ------------------------------------------------------------------


class Processes:
    """Processes this test started; whatever still runs at teardown is killed by its id."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, module: str, config: Path, stderr: Path) -> subprocess.Popen[str]:
        with stderr.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environment(),
                text=True,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def kill_leftovers(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    running = Processes()
    yield running
    running.kill_leftovers()


def address_from(ready_file: Path, process: subprocess.Popen[str], log: Path) -> str:
    give_up = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < give_up:
        if ready_file.exists():
            return ready_file.read_text().strip()
        if process.poll() is not None:
            pytest.fail(f"exited with code {process.returncode} before serving:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"no address in {ready_file} after {START_TIMEOUT_S} s:\n{log.read_text()}")


class Started:
    def __init__(self, process: subprocess.Popen[str], address: str, log: Path) -> None:
        self.process, self.address, self.log = process, address, log

    def stop(self, within_s: float) -> None:
        """SIGTERM; the process must exit 0 within `within_s` and log that it stopped."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=within_s) == 0, self.log.read_text()
        text = self.log.read_text()
        assert "Traceback" not in text
        messages = [entry["message"] for entry in json_logs(text)]
        assert "serving" in messages
        assert messages[-1] == "stopped"


GLOBAL_NODE = Identity("GLOBAL", Tier.GLOBAL, "global")
EU_REGIONAL = Identity("EU", Tier.REGIONAL, "regional-eu")
EU_OPERATOR = Identity("EU", Tier.OPERATOR, "ops")
EU_SILO = Identity("EU", Tier.SILO, "hospital-a")


def start_global(processes: Processes, pki: Path, tmp_path: Path, **settings: object) -> Started:
    nodes = Provisioner(pki, tmp_path / "nodes")
    callers = {EU_REGIONAL: Role.REGIONAL, EU_OPERATOR: Role.OPERATOR}
    ready, log = tmp_path / "global.address", tmp_path / "global.log"
    config = {
        "state_dir": str(tmp_path / "global-state"),
        "tls": tls_keys(nodes.tls(GLOBAL_NODE)),
        "token_keys": str(nodes.key_set(GLOBAL_NODE, callers)),
        "crl": str(nodes.crl),
        "listen": "127.0.0.1:0",
        "ready_file": str(ready),
        "architecture": "mlp-4-8-3",
        "rounds": 1,
        **policy_keys("GLOBAL"),
        **settings,
    }
    process = processes.start("global_agg", write_config(tmp_path / "global.yaml", config), log)
    return Started(process, address_from(ready, process, log), log)


def start_regional(processes: Processes, pki: Path, tmp_path: Path, global_address: str) -> Started:
    nodes = Provisioner(pki, tmp_path / "nodes")
    token = nodes.token(EU_REGIONAL)
    ready, log = tmp_path / "regional.address", tmp_path / "regional.log"
    config = {
        "jurisdiction": "EU",
        "global_address": global_address,
        "state_dir": str(tmp_path / "regional-state"),
        "tls": tls_keys(nodes.tls(EU_REGIONAL)),
        "token": {"key": str(token.key), "kid": token.kid},
        "token_keys": str(nodes.key_set(EU_REGIONAL, {EU_SILO: Role.SILO, EU_OPERATOR: Role.OPERATOR})),
        "crl": str(nodes.crl),
        "listen": "127.0.0.1:0",
        "ready_file": str(ready),
        "min_silos": 1,
        "forward_margin_s": 1.0,
        **policy_keys("EU"),
    }
    process = processes.start("regional", write_config(tmp_path / "regional.yaml", config), log)
    return Started(process, address_from(ready, process, log), log)


def check_serving_and_join(pki: Path, tmp_path: Path, global_: Started, regional: Started) -> None:
    """Both answer health SERVING over mTLS; a silo registers and the regional joins the global."""
    nodes = Provisioner(pki, tmp_path / "nodes")
    operator_tokens = nodes.token(EU_OPERATOR).minter(EU_OPERATOR, Role.OPERATOR)
    silo_tokens = nodes.token(EU_SILO).minter(EU_SILO, Role.SILO)
    to_global, _ = open_authenticated_channel(
        global_.address, nodes.tls(EU_OPERATOR), operator_tokens, expect=Tier.GLOBAL
    )
    to_regional, _ = open_authenticated_channel(
        regional.address, nodes.tls(EU_SILO), silo_tokens, expect=Tier.REGIONAL
    )
    with to_global, to_regional:
        wait_until_serving(to_global, timeout_s=10)
        wait_until_serving(to_global, service="jurisfed.v1.GlobalAggregator", timeout_s=10)
        wait_until_serving(to_regional, service="jurisfed.v1.RegionalAggregator", timeout_s=10)

        # Once a silo registers, the regional has its quorum and joins the global over mTLS.
        regional_pb2_grpc.RegionalAggregatorStub(to_regional).RegisterSilo(
            regional_pb2.RegisterSiloRequest(example_count=10), timeout=10
        )
        status_stub = global_pb2_grpc.GlobalAggregatorStub(to_global)
        give_up = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < give_up:
            status = status_stub.GetStatus(global_pb2.GetGlobalStatusRequest(), timeout=10)
            if list(status.registered_jurisdictions) == ["EU"]:
                break
            time.sleep(0.1)
        assert list(status.registered_jurisdictions) == ["EU"], regional.log.read_text()


def test_a_global_and_a_regional_serve_health_over_mtls_and_stop_on_sigterm(
    pki: Path, tmp_path: Path, processes: Processes
) -> None:
    global_ = start_global(processes, pki, tmp_path)
    regional = start_regional(processes, pki, tmp_path, global_.address)
    assert global_.address.startswith("127.0.0.1:")
    assert not global_.address.endswith(":0")  # the port actually bound, not the 0 asked for
    check_serving_and_join(pki, tmp_path, global_, regional)
    # The global opened round 1 for EU: the regional is waiting for its silo's update.

    regional.stop(within_s=EXIT_TIMEOUT_S)
    global_.stop(within_s=EXIT_TIMEOUT_S)


@pytest.mark.slow  # ~12 s: it waits out the prompt-exit limit before failing
def test_a_global_stops_promptly_while_a_regional_long_polls_it(
    pki: Path, tmp_path: Path, processes: Processes
) -> None:
    # Two jurisdictions expected and only EU comes: no round opens, so EU's regional long-polls.
    global_ = start_global(processes, pki, tmp_path, expected_jurisdictions=2, start_timeout_s=600)
    regional = start_regional(processes, pki, tmp_path, global_.address)
    check_serving_and_join(pki, tmp_path, global_, regional)

    global_.stop(within_s=PROMPT_EXIT_S)
