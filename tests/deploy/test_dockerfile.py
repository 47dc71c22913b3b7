"""deploy/Dockerfile, checked without a container engine: everything it copies, pins, runs and
promises exists and works outside the container. (tests/deploy/test_image_build.py builds and
runs the image for real where podman can.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from global_agg.config import GlobalConfig
from jurisfed.config import load_config
from regional.config import RegionalConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
ENTRYPOINT = ROOT / "deploy" / "jurisfed-node"
VENV_BIN = ROOT / ".venv" / "bin"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if line.strip() or pending:
            joined.append(pending + line)
        pending = ""
    found = []
    for line in joined:
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1]
            result[current] = []
        elif current:
            result[current].append((word, rest))
    return result


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    verdict = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in IGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = re.compile(
            "^"
            + re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
            + "$"
        )
        if any(regex.match(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_the_image_installs_exactly_the_lock_file_with_the_makefiles_uv() -> None:
    build = stages()["build"]
    args = dict(rest.split("=", 1) for word, rest in build if word == "ARG" and "=" in rest)
    assert args["UV_VERSION"] == makefile_uv_version()
    syncs = [rest for word, rest in build if word == "RUN" and "uv sync" in rest]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync
        assert "--no-dev" in sync
        assert "--python python3.11" in sync
    assert "--no-install-project" in syncs[0]
    assert "--no-editable" in syncs[1]  # the runtime stage needs no source tree
    assert "--no-cache" in syncs[1]  # the project is built from the sources just copied
    env = env_of(build)
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_PROJECT_ENVIRONMENT"] == "/opt/jurisfed"
    assert ("COPY", "--from=build /opt/jurisfed /opt/jurisfed") in stages()["runtime"]


def test_everything_copied_exists_is_in_the_build_context_and_is_what_the_package_needs() -> None:
    sources: list[str] = []
    for stage in stages().values():
        for word, rest in stage:
            if word == "COPY" and not rest.startswith("--from"):
                *copied, _ = rest.split()
                sources += copied
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is copied but excluded from the build context"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied_dirs = {s for s in sources if (ROOT / s).is_dir()}
    assert copied_dirs == packages
    assert pyproject["project"]["readme"] in sources
    assert {"pyproject.toml", "uv.lock"} <= set(sources)
    for package, files in pyproject["tool"]["setuptools"]["package-data"].items():
        for file in files:
            assert (ROOT / package / file).is_file()
    # Every source file of the packages is in the context; caches, environments and secrets are not.
    tracked = subprocess.run(
        ["git", "ls-files", *sorted(packages)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    assert not [path for path in tracked if ignored(path)]
    for kept_out in (
        ".venv/bin/python",
        ".tools/bin/uv",
        "demo-out/pki/ca/ca.key",
        "deploy/k8s/overlays/eu/secrets/tls.key",
        "deploy/policies/eu.yaml",
        "tests/conftest.py",
        ".git/config",
        "jurisfed/__pycache__/config.cpython-311.pyc",
        "regional/sub/__pycache__/x.pyc",
    ):
        assert ignored(kept_out), kept_out


def test_the_runtime_is_non_root_read_only_friendly_and_shares_the_deploy_layout() -> None:
    runtime = stages()["runtime"]
    words = dict(runtime)
    args = dict(rest.split("=", 1) for word, rest in runtime if word == "ARG" and "=" in rest)
    assert words["USER"] == "${UID}:${UID}"
    assert args["UID"] == "10001"
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env_of(stages()["build"])["UV_COMPILE_BYTECODE"] == "1"  # compiled at build time instead
    assert env["HOME"] == "/tmp"  # TensorFlow and Keras caches go to the tmpfs
    assert env["PATH"].startswith("/opt/jurisfed/bin:")
    assert json.loads(words["VOLUME"]) == ["/var/lib/jurisfed"]
    setup = next(rest for word, rest in runtime if word == "RUN" and "useradd" in rest)
    for directory in (
        "/etc/jurisfed/config",
        "/etc/jurisfed/tls",
        "/etc/jurisfed/policy",
        "/etc/jurisfed/policy-keys",
        "/etc/jurisfed/token",
        "/etc/jurisfed/crl",
        *(f"/etc/jurisfed/token-keys/{role}" for role in ("silo", "regional", "operator", "auditor")),
    ):
        assert directory in setup  # mount points exist even on a read-only root
    assert "chown jurisfed:jurisfed /var/lib/jurisfed" in setup
    # The same user and paths in compose, Kubernetes and the shipped configuration files.
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert {s["user"] for s in compose["services"].values()} == {"10001:10001"}
    for tier in ("global", "regional", "silo"):
        statefulset = yaml.safe_load(
            (ROOT / "deploy" / "k8s" / "base" / tier / "statefulset.yaml").read_text()
        )
        assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    exposed = {int(port) for port in words["EXPOSE"].split()}
    configs: list[GlobalConfig | RegionalConfig] = [
        load_config(GlobalConfig, ROOT / "deploy/config/global.yaml", env_prefix="global", environ={})
    ]
    configs += [
        load_config(
            RegionalConfig, ROOT / f"deploy/config/regional-{j}.yaml", env_prefix="regional", environ={}
        )
        for j in ("eu", "in", "us")
    ]
    assert exposed == {int(c.listen.rsplit(":", 1)[1]) for c in configs} | {9464}
    for config in configs:
        assert str(config.state_dir) == "/var/lib/jurisfed"
        assert str(config.tls.cert.parent) == env["JURISFED_HEALTHCHECK_TLS_DIR"] == "/etc/jurisfed/tls"
        assert str(config.token_keys) == "/etc/jurisfed/token-keys"
        assert str(config.crl.parent) == "/etc/jurisfed/crl"
        if isinstance(config, RegionalConfig):
            assert str(config.token.key.parent) == "/etc/jurisfed/token"


def test_one_entry_point_and_a_health_check_through_it() -> None:
    runtime = stages()["runtime"]
    words = dict(runtime)
    assert json.loads(words["ENTRYPOINT"]) == ["jurisfed-node"]
    assert ("COPY", "deploy/jurisfed-node /usr/local/bin/jurisfed-node") in runtime
    healthcheck = words["HEALTHCHECK"]
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == ["jurisfed-node", "healthcheck"]
    assert os.access(ENTRYPOINT, os.X_OK)
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=False).returncode == 0


def run_entrypoint(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The entry point as the image runs it: the environment's bin directory first on PATH."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": "/tmp", **(environ or {})}
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        ("global", "python -m global_agg"),
        ("regional", "python -m regional"),
        ("silo", "python -m silo"),
        ("healthcheck", "python -m jurisfed.healthcheck"),
        ("jurisfed", "jurisfed"),
    ],
)
def test_each_sub_command_reaches_its_tier(command: str, prog: str) -> None:
    result = run_entrypoint(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {prog} ")


def test_the_entry_point_refuses_what_it_does_not_know() -> None:
    for args in ((), ("aggregator",)):
        result = run_entrypoint(*args)
        assert result.returncode == 64
        assert "usage: jurisfed-node {global|regional|silo|healthcheck|jurisfed}" in result.stderr
    assert run_entrypoint("--help").returncode == 0


def test_the_health_check_as_the_image_runs_it_fails_without_a_server(tmp_path: Path) -> None:
    # The image's HEALTHCHECK: no arguments, settings from the environment; no server means exit 3.
    from jurisfed.auth.identity import Identity, Tier
    from jurisfed.auth.pki import create_ca, issue

    tls = issue(create_ca(tmp_path / "ca"), Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "tls")
    environ = {
        "JURISFED_HEALTHCHECK_ADDRESS": "127.0.0.1:9",
        "JURISFED_HEALTHCHECK_TLS_DIR": str(tls.cert.parent),
    }
    result = run_entrypoint("healthcheck", environ=environ)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("no answer from 127.0.0.1:9")
