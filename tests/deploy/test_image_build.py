"""Build deploy/Dockerfile with podman and run the global aggregator from it, for real.

Opt-in: it takes minutes (about 2.8 GB of TensorFlow) and needs podman, so it runs only with
JURISFED_IMAGE_TESTS=1 and is skipped, saying why, otherwise. No registry is needed: the base
image is JURISFED_BASE_IMAGE if set, else localhost/jurisfed-base:bookworm, which this test
makes with debootstrap (Debian bookworm, python3.11) when it is missing; the host's CA bundle
goes into it, so pip and uv work behind a TLS-inspecting proxy. Packages come from PyPI, as
`make` gets them.

On this project's development VM podman needs, in /etc/containers/containers.conf:
`runtime = "runc"` under [engine] (crun cannot run with its cgroups) and
`default_ulimits = ["nofile=10000:10000", "nproc=4096:4096"]` under [containers] (raising
rlimits is not permitted there). Other machines need nothing special.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.pki import create_ca, issue
from jurisfed.auth.revocation import publish_crl
from jurisfed.auth.token_keys import generate_token_key, install_public_key
from jurisfed.auth.tokens import Role

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "localhost/jurisfed-base:bookworm"
IMAGE = "localhost/jurisfed:test"
BUILD_TIMEOUT_S = 3600
UID = 10001

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("JURISFED_IMAGE_TESTS") != "1", reason="set JURISFED_IMAGE_TESTS=1 to build the image"
    ),
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed (apt-get install podman)"
    ),
]


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, (
            f"podman {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def make_base(tmp: Path) -> None:
    """A minimal Debian bookworm with python3.11, imported as DEFAULT_BASE."""
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip(
            f"no base image: set JURISFED_BASE_IMAGE, or run as root with debootstrap to make {DEFAULT_BASE}"
        )
    rootfs = tmp / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3.11,python3.11-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copyfile(bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        [
            "podman",
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "--change",
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "-",
            DEFAULT_BASE,
        ],
        stdin=tar.stdout,
        check=True,
        capture_output=True,
        timeout=600,
    )
    tar.wait()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = os.environ.get("JURISFED_BASE_IMAGE", DEFAULT_BASE)
    if base == DEFAULT_BASE and podman("image", "exists", DEFAULT_BASE, check=False).returncode != 0:
        make_base(tmp_path_factory.mktemp("base"))
    podman(
        "build",
        "--format",
        "docker",  # keeps HEALTHCHECK, which the OCI format has no place for
        "-f",
        str(ROOT / "deploy" / "Dockerfile"),
        "--ignorefile",
        str(ROOT / "deploy" / "Dockerfile.dockerignore"),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=BUILD_TIMEOUT_S,
    )
    return IMAGE


@pytest.fixture
def node_etc(tmp_path: Path) -> Path:
    """/etc/jurisfed of the global aggregator as compose and Kubernetes mount it (owned by uid 10001)."""
    etc = tmp_path / "etc"
    (etc / "config").mkdir(parents=True)
    shutil.copyfile(ROOT / "deploy/config/global.yaml", etc / "config/global.yaml")
    shutil.copytree(
        ROOT / "deploy/policies", etc / "policy", ignore=shutil.ignore_patterns("keys", "topology", "*.md")
    )
    shutil.copytree(ROOT / "deploy/policies/keys", etc / "policy-keys")
    ca = create_ca(tmp_path / "ca")
    issue(
        ca,
        Identity(GLOBAL_JURISDICTION, Tier.GLOBAL, "global-1"),
        etc / "tls",
        dns_names=("global.jurisfed-global", "localhost"),
    )
    crl, _ = publish_crl(ca)
    (etc / "crl").mkdir()
    shutil.copyfile(crl, etc / "crl" / "crl.pem")
    operator = generate_token_key(tmp_path / "operator" / "ml-team-1.key").public_key()
    install_public_key(etc / "token-keys", Role.OPERATOR, "ml-team-1", operator)
    for path in [etc, *etc.rglob("*")]:
        os.chown(path, UID, UID)
    return etc


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"jurisfed-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--volumes", name, check=False)
    podman("volume", "rm", "--force", f"{name}-state", check=False)


def test_the_image_runs_as_10001_with_its_entry_point(image: str) -> None:
    assert podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() == str(UID)
    # The image holds this checkout's code: every tier lists the same configuration keys as here.
    for tier, module in (("global", "global_agg"), ("regional", "regional"), ("silo", "silo")):
        here = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", module, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert podman("run", "--rm", image, tier, "--help").stdout == here, tier
    assert podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", image, "regional", "--help"
    ).stdout.startswith("usage: python -m regional")
    # TensorFlow loads with a read-only root: its caches go to the tmpfs.
    imported = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python", image,
        "-c", "import tensorflow, silo.trainer; print(tensorflow.__version__)",
    )  # fmt: skip
    assert imported.stdout.strip().endswith("2.14.1")


def test_the_global_serves_healthy_on_a_read_only_root_and_drains_on_sigterm(
    image: str, node_etc: Path, container_name: str
) -> None:
    podman(
        "run", "--detach", "--name", container_name, "--read-only", "--tmpfs", "/tmp",
        "-v", f"{node_etc}:/etc/jurisfed:ro", "-v", f"{container_name}-state:/var/lib/jurisfed",
        "-e", "JURISFED_HEALTHCHECK_ADDRESS=127.0.0.1:50051",
        image, "global", "--config", "/etc/jurisfed/config/global.yaml",
    )  # fmt: skip
    give_up = time.monotonic() + 120
    while podman("healthcheck", "run", container_name, check=False).returncode != 0:
        state = podman("inspect", container_name, "--format", "{{.State.Status}}").stdout.strip()
        assert state == "running", podman("logs", container_name).stderr[-3000:]
        assert time.monotonic() < give_up, "the image's HEALTHCHECK never passed"
        time.sleep(1)
    podman("stop", "--time", "30", container_name)
    assert podman("inspect", container_name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    assert '"message": "stopped"' in podman("logs", container_name).stderr
    # State and audit log went to the volume, and the log verifies.
    verified = podman(
        "run", "--rm", "-v", f"{container_name}-state:/var/lib/jurisfed", image,
        "jurisfed", "audit", "verify", "/var/lib/jurisfed/audit.log.jsonl",
    )  # fmt: skip
    assert "VERIFIED" in verified.stdout
