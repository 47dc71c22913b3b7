"""deploy/compose.yaml: every service's config, certificate, policy and data is really there.

No container engine runs here, so the file is checked the way compose would use it: its
`init` provisioning (deploy/compose_init.py) runs for real into a directory that stands in for
the `federation` volume, and each service's configuration is loaded with its tier's config
class, with the service's environment, and every path it names is resolved through the
service's mounts to a file that exists.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from cryptography import x509

from global_agg.config import GlobalConfig
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.pki import certificate_identity
from jurisfed.config import load_config
from jurisfed.policy.engine import requirements
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import Artifact, Endpoint
from regional.config import RegionalConfig
from silo.config import SiloConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TIER_CLASSES: dict[str, tuple[type[Any], str]] = {
    "global": (GlobalConfig, "global"),
    "regional": (RegionalConfig, "regional"),
    "silo": (SiloConfig, "silo"),
}


def load_compose_init() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_init", DEPLOY / "compose_init.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `init` writes into the `federation` volume."""
    out = tmp_path_factory.mktemp("federation")
    module = load_compose_init()
    assert module.provision(out) is True
    assert module.provision(out) is False  # a second `compose up` leaves it alone
    return out


def nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("command") and name != "operator"}


def resolve(service: dict[str, Any], path: PurePosixPath, federation: Path) -> Path | str:
    """The host file (bind mount or federation subpath) behind `path`, or 'volume:NAME'."""
    best: tuple[int, Path | str] | None = None
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            host: Path | str = DEPLOY / source if source.startswith("./") else f"volume:{source}"
        else:
            target = volume["target"]
            assert volume["source"] == "federation", volume
            host = federation / volume["volume"]["subpath"]
        mount = PurePosixPath(target)
        if path == mount or mount in path.parents:
            depth = len(mount.parts)
            relative = path.relative_to(mount)
            candidate = host / relative if isinstance(host, Path) else host
            if best is None or depth > best[0]:
                best = (depth, candidate)
    assert best is not None, f"{path} is not mounted"
    return best[1]


def tier_config(name: str, service: dict[str, Any], federation: Path, tmp_path: Path) -> Any:
    tier, flag, config_path = service["command"]
    assert flag == "--config"
    kind, prefix = TIER_CLASSES[tier]
    host_file = resolve(service, PurePosixPath(config_path), federation)
    assert isinstance(host_file, Path)
    assert host_file.is_file(), f"{name}: {config_path} -> {host_file}"
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    # Load the same text, as if at its container path, so relative paths would resolve alike.
    copy = tmp_path / name / PurePosixPath(config_path).name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host_file, copy)
    config = load_config(
        kind,
        copy,
        env_prefix=prefix,
        environ={k: v for k, v in environment.items() if k.startswith("JURISFED_")},
    )
    return tier, config


def test_every_services_files_exist_behind_its_mounts(
    compose: dict[str, Any], federation: Path, tmp_path: Path
) -> None:
    for name, service in nodes(compose).items():
        tier, config = tier_config(name, service, federation, tmp_path)
        files = [config.tls.ca_cert, config.tls.cert, config.tls.key, config.policy]
        files += list(getattr(config, "member_policies", ()))
        if tier == "silo":
            files.append(config.data)
        for file in files:
            host = resolve(service, PurePosixPath(file), federation)
            assert isinstance(host, Path)
            assert host.is_file(), f"{name}: {file} -> {host}"
        keys = resolve(service, PurePosixPath(config.policy_keys), federation)
        assert isinstance(keys, Path)
        assert list(keys.glob("*.pem")), f"{name}: no approver keys"
        if tier != "global":  # the global calls no one
            token = resolve(service, PurePosixPath(config.token.key), federation)
            assert isinstance(token, Path)
            assert token.is_file(), f"{name}: {config.token.key} -> {token}"
        if tier != "silo":
            crl = resolve(service, PurePosixPath(config.crl), federation)
            assert isinstance(crl, Path)
            assert crl.is_file(), f"{name}: {config.crl} -> {crl}"
        assert resolve(service, PurePosixPath(config.state_dir), federation) == f"volume:{name}-state"
        # Each node mounts its own certificate, no one else's, and it names the node's tier.
        identity = certificate_identity(resolve(service, PurePosixPath(config.tls.cert), federation))  # type: ignore[arg-type]
        assert identity.tier.value == tier
        if tier != "global":
            assert identity.jurisdiction == config.jurisdiction
        assert identity.node == ("global-1" if tier == "global" else name)


def test_each_node_dials_a_name_its_peer_certificate_carries(
    compose: dict[str, Any], federation: Path, tmp_path: Path
) -> None:
    services = nodes(compose)
    configs = {name: tier_config(name, s, federation, tmp_path)[1] for name, s in services.items()}
    for name, config in configs.items():
        address = getattr(config, "global_address", None) or getattr(config, "regional_address", None)
        if address is None:
            continue
        host, port = address.rsplit(":", 1)
        # The peer is the service that has this name as an alias on a network both are on.
        peers = [
            (peer, network)
            for peer, service in services.items()
            for network, settings in (
                service["networks"] if isinstance(service["networks"], dict) else {}
            ).items()
            if host in ((settings or {}).get("aliases") or [])
        ]
        assert len(peers) == 1, f"{name} dials {host}, which {len(peers)} services answer to"
        peer, network = peers[0]
        own_networks = services[name]["networks"]
        assert network in own_networks, f"{name} is not on {network}, where {peer} answers to {host}"
        assert configs[peer].listen == f"0.0.0.0:{port}"
        cert_path = resolve(services[peer], PurePosixPath(configs[peer].tls.cert), federation)
        assert isinstance(cert_path, Path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in names.get_values_for_type(x509.DNSName)
        # The health check asks the port the tier listens on.
        assert services[peer]["environment"]["JURISFED_HEALTHCHECK_ADDRESS"] == f"127.0.0.1:{port}"


def test_each_aggregator_trusts_exactly_its_callers_token_keys(
    compose: dict[str, Any], federation: Path, tmp_path: Path
) -> None:
    services = nodes(compose)
    configs = {name: tier_config(name, s, federation, tmp_path) for name, s in services.items()}
    operator_key = compose["services"]["operator"]["command"][-1]
    operator_kid = PurePosixPath(operator_key).stem  # the operator's command line reads it so
    assert resolve(compose["services"]["operator"], PurePosixPath(operator_key), federation) == (
        federation / "tokens" / "operator" / f"{operator_kid}.key"
    )
    assert (federation / "tokens" / "operator" / f"{operator_kid}.key").is_file()
    for name, (tier, config) in configs.items():
        if tier == "silo":
            continue
        key_set = resolve(services[name], PurePosixPath(config.token_keys), federation)
        assert isinstance(key_set, Path)
        trusted = {(pem.parent.name, pem.stem) for pem in key_set.glob("*/*.pem")}
        callers: set[tuple[str, str]] = {("operator", operator_kid)}
        for caller_tier, caller_config in configs.values():
            if tier == "global" and caller_tier == "regional":
                callers.add(("regional", caller_config.token.kid))
            if (
                tier == "regional"
                and caller_tier == "silo"
                and caller_config.jurisdiction == config.jurisdiction
            ):
                callers.add(("silo", caller_config.token.kid))
        assert trusted == callers, name


def test_networks_mirror_the_network_policies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert all(network["internal"] is True for network in compose["networks"].values())
    assert set(services["global"]["networks"]) == {"border"}
    jurisdictions = [name.removeprefix("regional-") for name in services if name.startswith("regional-")]
    assert sorted(jurisdictions) == ["eu", "in", "us"]
    for j in jurisdictions:
        assert set(services[f"regional-{j}"]["networks"]) == {"border", j}
        silos = [name for name in services if name.startswith(f"{j}-silo-")]
        assert silos
        for silo in silos:
            assert services[silo]["networks"] == [j], f"{silo} must share a network with its regional only"
    assert all("ports" not in service for service in services.values())
    assert services["init"]["network_mode"] == "none"


def test_every_container_runs_unprivileged_on_a_read_only_root(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert service["user"] == "10001:10001", name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["tmpfs"] == ["/tmp"], name


def test_each_jurisdiction_has_the_silos_its_policy_requires(compose: dict[str, Any], tmp_path: Path) -> None:
    """As `jurisfed demo`: enough silos for the cohort each example policy needs behind an aggregate."""
    module = load_compose_init()
    global_policy = read_policy(DEPLOY / "policies" / "global.yaml")
    for jurisdiction, count in module.SILOS.items():
        policy = read_policy(DEPLOY / "policies" / f"{jurisdiction.lower()}.yaml")
        needs = requirements(
            policy,
            Artifact.AGGREGATE,
            Endpoint(Tier.REGIONAL, jurisdiction, policy.hosting_location),
            Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, global_policy.hosting_location),
        )
        silos = [n for n in compose["services"] if n.startswith(f"{jurisdiction.lower()}-silo-")]
        assert len(silos) == count >= (needs.min_cohort_silos or 1)
        regional = load_config(
            RegionalConfig,
            DEPLOY / "config" / f"regional-{jurisdiction.lower()}.yaml",
            env_prefix="regional",
            environ={},
        )
        assert (needs.min_cohort_silos or 1) <= regional.min_silos <= count
    configured = load_config(GlobalConfig, DEPLOY / "config" / "global.yaml", env_prefix="global", environ={})
    assert configured.expected_jurisdictions == len(module.SILOS)
    assert sorted(p.name for p in configured.member_policies) == [
        f"{j.lower()}.yaml" for j in sorted(module.SILOS)
    ]


def test_init_issues_the_operator_a_certificate_the_operator_service_uses(
    compose: dict[str, Any], federation: Path
) -> None:
    operator = compose["services"]["operator"]
    tls = resolve(operator, PurePosixPath("/etc/jurisfed/tls/tls.crt"), federation)
    assert isinstance(tls, Path)
    identity = certificate_identity(tls)
    assert identity == Identity(GLOBAL_JURISDICTION, Tier.OPERATOR, "compose-operator")
    assert operator["entrypoint"] == ["jurisfed-node", "jurisfed"]


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0
    if shutil.which("docker")
    else True,
    reason="docker compose is not installed here",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
