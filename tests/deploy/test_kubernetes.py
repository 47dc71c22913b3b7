"""The Kustomize overlays, rendered with `kubectl kustomize` and checked offline.

Every overlay and base is rendered (after certificates are issued into the overlays'
secrets/, as the runbook says) and validated against the Kubernetes schema; the rendered
objects are then checked for what a security review asks: the pods are locked down, every
file a tier's config names is mounted, and the NetworkPolicies admit and reach exactly what
they should, evaluated the way Kubernetes evaluates them (selectors against labels).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from global_agg.config import GlobalConfig
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.pki import create_ca, issue
from jurisfed.auth.revocation import publish_crl
from jurisfed.auth.token_keys import generate_token_key
from jurisfed.config import load_config
from jurisfed.rpc.health_listener import LIVENESS
from regional.config import RegionalConfig
from silo.config import SiloConfig

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ("global", "eu", "in", "us")
BASES = ("default-deny", "global", "regional", "silo")
JURISDICTIONS = ("EU", "IN", "US")
GRPC_PORT = {"global": 50051, "regional": 50061}
METRICS_PORT = 9464
HEALTH_PORT = 8081

Doc = dict[str, Any]

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (Debian package kubectl) renders the overlays"
)


@dataclass(frozen=True)
class Rendered:
    docs: list[Doc]

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Doc:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def generated(self, kind: str, name: str) -> Doc:
        """A generated ConfigMap or Secret, whose name carries a content hash."""
        found = [d for d in self.all(kind) if d["metadata"]["name"].rsplit("-", 1)[0] == name]
        assert len(found) == 1, f"expected one generated {kind} {name}, found {len(found)}"
        return found[0]


def kustomize(directory: Path) -> list[Doc]:
    result = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


OVERLAY_IDENTITIES = {
    "global": (Identity(GLOBAL_JURISDICTION, Tier.GLOBAL, "global-1"), "global.jurisfed-global"),
    **{
        j.lower(): (Identity(j, Tier.REGIONAL, f"regional-{j.lower()}"), f"regional.jurisfed-{j.lower()}")
        for j in JURISDICTIONS
    },
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ as an operator has it just before `kubectl apply`: every input each overlay names
    that is not committed (certificate, token key, callers' public token keys, revocation list)
    made as the runbook makes it."""
    deploy = tmp_path_factory.mktemp("checkout") / "deploy"
    for part in ("k8s", "config", "policies"):
        shutil.copytree(ROOT / "deploy" / part, deploy / part, ignore=shutil.ignore_patterns("secrets"))
    ca = create_ca(deploy.parent / "ca")
    crl, _ = publish_crl(ca)
    for overlay, (identity, dns) in OVERLAY_IDENTITIES.items():
        directory = deploy / "k8s" / "overlays" / overlay
        issue(ca, identity, directory / "secrets", dns_names=(dns, "localhost"))
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for generator in kustomization.get("configMapGenerator", []) + kustomization.get(
            "secretGenerator", []
        ):
            for entry in generator.get("files", []):
                source = directory / entry.rsplit("=", 1)[-1]
                if source.exists():
                    continue
                if source.name == "crl.pem":
                    shutil.copyfile(crl, source)
                elif source.suffix == ".key":
                    generate_token_key(source)
                elif source.parent.parent.name == "token-keys":
                    public = generate_token_key(source.with_suffix(".key")).public_key()
                    source.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
                else:
                    pytest.fail(f"{overlay}: nothing makes {entry}")
    return deploy / "k8s"


OVERLAY_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def overlays(tree: Path) -> dict[str, Rendered]:
    OVERLAY_DIRS.update({name: tree / "overlays" / name for name in OVERLAYS})
    return {name: Rendered(kustomize(tree / "overlays" / name)) for name in OVERLAYS}


@pytest.fixture(scope="module")
def bases(tree: Path) -> dict[str, Rendered]:
    return {name: Rendered(kustomize(tree / "base" / name)) for name in BASES}


def test_every_overlay_and_base_renders_and_is_valid_kubernetes(
    overlays: dict[str, Rendered], bases: dict[str, Rendered]
) -> None:
    for name, rendered in [*overlays.items(), *(("base/" + n, r) for n, r in bases.items())]:
        assert rendered.docs, name
        for doc in rendered.docs:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{name}: {doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}"
                )


def test_an_overlay_cannot_be_rendered_without_its_certificate_and_keys() -> None:
    # Fail closed: a fresh checkout has no secrets/ or token-keys/, so nothing is applied by mistake.
    result = subprocess.run(
        [
            "kubectl",
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(ROOT / "deploy/k8s/overlays/eu"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if (ROOT / "deploy/k8s/overlays/eu/secrets/tls.key").exists():
        pytest.skip("this checkout has EU certificates in deploy/k8s/overlays/eu/secrets")
    assert result.returncode != 0
    assert "no such file or directory" in result.stderr


# --- every file the config names is mounted from the right object ---------------------------


def _tier(overlay: str) -> str:
    return "global" if overlay == "global" else "regional"


def _container(rendered: Rendered, tier: str) -> tuple[Doc, Doc]:
    statefulset = rendered.one("StatefulSet", tier)
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _config(rendered: Rendered, overlay: str, tmp_path: Path) -> GlobalConfig | RegionalConfig:
    """The tier's configuration as its container reads it: the ConfigMap's file and the container's
    environment."""
    tier = _tier(overlay)
    data = rendered.generated("ConfigMap", f"{tier}-config")["data"]
    path = tmp_path / f"{tier}.yaml"
    path.write_text(data[f"{tier}.yaml"])
    _, container = _container(rendered, tier)
    environ = {e["name"]: e["value"] for e in container.get("env", [])}
    if tier == "global":
        return load_config(GlobalConfig, path, env_prefix="global", environ=environ)
    return load_config(RegionalConfig, path, env_prefix="regional", environ=environ)


def _mounted(rendered: Rendered, pod: Doc, container: Doc, path: Path) -> str:
    """What provides `path` in the container: 'volume-claim', or the key's object and name."""
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    target = PurePosixPath(path)
    mount_path = next(
        (m for m in mounts if target == PurePosixPath(m) or PurePosixPath(m) in target.parents), None
    )
    assert mount_path is not None, f"{path} is not under any mount of {container['name']}"
    name = mounts[mount_path]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    if name not in volumes:
        return "volume-claim"
    relative = str(target.relative_to(mount_path))
    source = volumes[name]
    if "configMap" in source:
        obj = next(
            d for d in rendered.all("ConfigMap") if d["metadata"]["name"] == source["configMap"]["name"]
        )
        keys = set(obj["data"])
    else:
        obj = next(
            d for d in rendered.all("Secret") if d["metadata"]["name"] == source["secret"]["secretName"]
        )
        keys = set(obj["data"])
    assert relative == "." or relative in keys, f"{path}: {obj['metadata']['name']} has no key {relative}"
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_file_the_config_names_is_mounted(
    overlays: dict[str, Rendered], overlay: str, tmp_path: Path
) -> None:
    rendered = overlays[overlay]
    tier = _tier(overlay)
    pod, container = _container(rendered, tier)
    config = _config(rendered, overlay, tmp_path)
    assert container["args"] == [tier, "--config", f"/etc/jurisfed/config/{tier}.yaml"]
    assert _mounted(rendered, pod, container, Path(f"/etc/jurisfed/config/{tier}.yaml")).startswith(
        "ConfigMap/"
    )
    for path in (config.tls.ca_cert, config.tls.cert, config.tls.key):
        assert _mounted(rendered, pod, container, path).startswith(f"Secret/{tier}-tls-")
    policies = [config.policy, *getattr(config, "member_policies", ())]
    for path in policies:
        assert _mounted(rendered, pod, container, path).startswith(f"ConfigMap/{tier}-policy-")
    assert _mounted(rendered, pod, container, config.policy_keys).startswith("ConfigMap/policy-keys-")
    # Token keys: its own (regionals call the global), and one mounted folder per caller role.
    if isinstance(config, RegionalConfig):
        assert _mounted(rendered, pod, container, config.token.key).startswith(f"Secret/{tier}-token-")
        assert config.token.kid == f"regional-{overlay}"
        global_keys = OVERLAY_DIRS["global"] / "token-keys" / "regional" / f"{config.token.kid}.pem"
        assert global_keys.is_file(), "the global's key set does not name this regional's token key"
    callers = {"global": ("regional", "operator"), "regional": ("silo", "operator")}[tier]
    for role in callers:
        folder = config.token_keys / role
        assert (
            _mounted(rendered, pod, container, folder)
            == f"ConfigMap/token-keys-{role}-"
            + (rendered.generated("ConfigMap", f"token-keys-{role}")["metadata"]["name"].rsplit("-", 1)[1])
        )
    # The revocation list keeps its name, so an update reaches the running pod in place.
    assert _mounted(rendered, pod, container, config.crl) == "ConfigMap/federation-crl"
    assert _mounted(rendered, pod, container, config.state_dir) == "volume-claim"
    claims = [
        t["metadata"]["name"] for t in rendered.one("StatefulSet", tier)["spec"]["volumeClaimTemplates"]
    ]
    assert claims == ["state"]
    # The policy mounted is the jurisdiction's own, byte for byte the signed file in deploy/policies.
    policy_map = rendered.generated("ConfigMap", f"{tier}-policy")["data"]
    for path in policies:
        assert policy_map[path.name] == (ROOT / "deploy" / "policies" / path.name).read_text()
    if isinstance(config, RegionalConfig):
        assert config.policy.name == f"{overlay}.yaml"
        assert config.jurisdiction == overlay.upper()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_services_agree_with_the_config(
    overlays: dict[str, Rendered], overlay: str, tmp_path: Path
) -> None:
    rendered = overlays[overlay]
    tier = _tier(overlay)
    _, container = _container(rendered, tier)
    config = _config(rendered, overlay, tmp_path)
    port = int(config.listen.rsplit(":", 1)[1])
    assert config.listen.startswith("0.0.0.0:")  # reachable from other pods
    assert port == GRPC_PORT[tier]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": port, "metrics": METRICS_PORT, "health": HEALTH_PORT}
    assert config.telemetry.metrics_listen == f"0.0.0.0:{METRICS_PORT}"  # what the metrics port serves
    assert config.health_listen == f"0.0.0.0:{HEALTH_PORT}"  # what the health port serves
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JURISFED_HEALTHCHECK_ADDRESS"] == f"127.0.0.1:{port}"  # kubectl exec ... healthcheck
    # Native gRPC probes on the health-only port: readiness asks for the whole server, liveness
    # and startup for `liveness` (alive while starting, waiting or draining).
    probes = {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        handlers = {"exec", "grpc", "httpGet", "tcpSocket"} & set(probe)
        assert handlers == {"grpc"}, (name, handlers)
        assert probe["grpc"]["port"] == HEALTH_PORT, name
    assert probes["readinessProbe"]["grpc"].get("service", "") == ""
    assert probes["livenessProbe"]["grpc"]["service"] == probes["startupProbe"]["grpc"]["service"] == LIVENESS
    service = rendered.one("Service", tier)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (port, "grpc"),
        "metrics": (METRICS_PORT, "metrics"),
    }
    pod_labels = rendered.one("StatefulSet", tier)["spec"]["template"]["metadata"]["labels"]
    assert _selects(service["spec"]["selector"], pod_labels)
    budget = rendered.one("PodDisruptionBudget", tier)
    assert _selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert budget["spec"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down(overlays: dict[str, Rendered], overlay: str) -> None:
    rendered = overlays[overlay]
    pod, container = _container(rendered, _tier(overlay))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {p for p, m in mounts.items() if not m.get("readOnly")} == {"/var/lib/jurisfed", "/tmp"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    namespace = rendered.one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(
        d["metadata"].get("namespace") == namespace["metadata"]["name"]
        for d in rendered.docs
        if d is not namespace
    )


# --- NetworkPolicies, evaluated as Kubernetes evaluates them ---------------------------------


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace_labels: dict[str, str]


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, or a plain map as in a Service) against a pod's labels."""
    match_labels: dict[str, str] = (
        selector.get("matchLabels", {})
        if "matchLabels" in selector or "matchExpressions" in selector
        else selector
    )
    assert not selector.get("matchExpressions"), "the manifests use matchLabels only"
    return all(labels.get(k) == v for k, v in match_labels.items())


def _peer_matches(peer: Doc, pod: Pod, own_namespace: dict[str, str]) -> bool:
    assert "ipBlock" not in peer, "an ipBlock admits addresses, not labelled pods"
    namespace_ok = (
        _selects(peer["namespaceSelector"], pod.namespace_labels)
        if "namespaceSelector" in peer
        else pod.namespace_labels == own_namespace
    )
    pod_ok = _selects(peer["podSelector"], pod.labels) if "podSelector" in peer else True
    return namespace_ok and pod_ok


def _policies_for(rendered: Rendered, pod_labels: dict[str, str]) -> list[Doc]:
    return [p for p in rendered.all("NetworkPolicy") if _selects(p["spec"]["podSelector"], pod_labels)]


def admits(rendered: Rendered, target: Pod, peer: Pod, port: int, protocol: str = "TCP") -> bool:
    """Would `peer` be let in to `target` on `port`? (isolated pods: the union of all ingress rules)"""
    return _allowed(rendered, target, peer, port, protocol, "ingress", "from")


def reaches(rendered: Rendered, source: Pod, peer: Pod, port: int, protocol: str = "TCP") -> bool:
    return _allowed(rendered, source, peer, port, protocol, "egress", "to")


def _allowed(
    rendered: Rendered, pod: Pod, peer: Pod, port: int, protocol: str, direction: str, key: str
) -> bool:
    policies = _policies_for(rendered, pod.labels)
    policy_type = direction.capitalize()
    assert any(policy_type in p["spec"]["policyTypes"] for p in policies), (
        f"the pod is not isolated for {direction}"
    )
    for policy in policies:
        for rule in policy["spec"].get(direction) or []:
            assert rule.get(key), f"{policy['metadata']['name']}: a rule without '{key}' opens to everyone"
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without ports opens every port"
            port_ok = any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"])
            if port_ok and any(
                _peer_matches(peer_rule, peer, pod.namespace_labels) for peer_rule in rule[key]
            ):
                return True
    return False


def _pod(rendered: Rendered, kind_name: str) -> Pod:
    statefulset = rendered.one("StatefulSet", kind_name)
    namespace = rendered.one("Namespace")["metadata"]
    # The API server labels every namespace with its name (kubernetes.io/metadata.name).
    namespace_labels = {**namespace["labels"], "kubernetes.io/metadata.name": namespace["name"]}
    return Pod(statefulset["spec"]["template"]["metadata"]["labels"], namespace_labels)


def _silo(bases: dict[str, Rendered], jurisdiction: str, namespace: str) -> Pod:
    """A silo pod of base/silo as an overlay labels it, in a namespace of its jurisdiction."""
    labels = bases["silo"].one("StatefulSet", "silo")["spec"]["template"]["metadata"]["labels"]
    return Pod(
        {**labels, "jurisfed.io/jurisdiction": jurisdiction},
        {"kubernetes.io/metadata.name": namespace, "jurisfed.io/jurisdiction": jurisdiction},
    )


KUBE_DNS = Pod({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
STRANGER = Pod({"app": "web"}, {"kubernetes.io/metadata.name": "default"})


def _rules(rendered: Rendered, pod: Pod, direction: str) -> Iterator[Doc]:
    for policy in _policies_for(rendered, pod.labels):
        yield from policy["spec"].get(direction) or []


@pytest.mark.parametrize("jurisdiction", JURISDICTIONS)
def test_a_regional_admits_its_own_silos_and_nothing_else(
    overlays: dict[str, Rendered], bases: dict[str, Rendered], jurisdiction: str
) -> None:
    rendered = overlays[jurisdiction.lower()]
    regional = _pod(rendered, "regional")
    grpc = GRPC_PORT["regional"]
    own_silo = _silo(bases, jurisdiction, f"hospital-{jurisdiction.lower()}")
    assert admits(rendered, regional, own_silo, grpc)
    assert not admits(rendered, regional, own_silo, METRICS_PORT)
    assert not admits(rendered, regional, own_silo, grpc, "UDP")
    for other in JURISDICTIONS:
        if other != jurisdiction:
            assert not admits(rendered, regional, _silo(bases, other, f"hospital-{other.lower()}"), grpc)
            # A silo of another jurisdiction in one of this jurisdiction's namespaces is refused too.
            mislabelled = Pod(_silo(bases, other, "x").labels, own_silo.namespace_labels)
            assert not admits(rendered, regional, mislabelled, grpc)
    # Silo-labelled pods in a namespace that is not this jurisdiction's are refused.
    assert not admits(
        rendered, regional, Pod(own_silo.labels, {"kubernetes.io/metadata.name": "default"}), grpc
    )
    for stranger in (STRANGER, KUBE_DNS, regional, _pod(overlays["global"], "global")):
        assert not admits(rendered, regional, stranger, grpc)
    assert admits(rendered, regional, PROMETHEUS, METRICS_PORT)
    # The health-only port is for the kubelet, whose probes come from the pod's own node, which
    # NetworkPolicy does not filter: no pod, not even its own silos, is admitted to it.
    for peer in (own_silo, PROMETHEUS, STRANGER, KUBE_DNS, regional, _pod(overlays["global"], "global")):
        assert not admits(rendered, regional, peer, HEALTH_PORT)
    assert not admits(rendered, regional, PROMETHEUS, grpc)
    # Structurally: on the gRPC port, every peer names this jurisdiction's silos in both selectors.
    for rule in _rules(rendered, regional, "ingress"):
        rule_ports = {p["port"] for p in rule["ports"]}
        assert rule_ports in ({grpc}, {METRICS_PORT}), rule
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if rule_ports == {grpc}:
                assert peer["namespaceSelector"]["matchLabels"] == {"jurisfed.io/jurisdiction": jurisdiction}
                assert peer["podSelector"]["matchLabels"] == {
                    "app.kubernetes.io/component": "silo",
                    "jurisfed.io/jurisdiction": jurisdiction,
                }


@pytest.mark.parametrize("jurisdiction", JURISDICTIONS)
def test_a_regional_reaches_the_global_endpoint_and_dns_only(
    overlays: dict[str, Rendered], bases: dict[str, Rendered], jurisdiction: str, tmp_path: Path
) -> None:
    rendered, global_rendered = overlays[jurisdiction.lower()], overlays["global"]
    regional = _pod(rendered, "regional")
    global_pod = _pod(global_rendered, "global")
    config = _config(rendered, jurisdiction.lower(), tmp_path)
    assert isinstance(config, RegionalConfig)
    # The address in the config is the global overlay's Service, and its port is the one let through.
    host, port = config.global_address.rsplit(":", 1)
    service_name, namespace = host.split(".")[:2]
    service = global_rendered.one("Service", service_name)
    assert (
        service["metadata"]["namespace"]
        == namespace
        == global_pod.namespace_labels["kubernetes.io/metadata.name"]
    )
    assert int(port) == GRPC_PORT["global"] == service["spec"]["ports"][0]["port"]
    assert _selects(service["spec"]["selector"], global_pod.labels)
    assert reaches(rendered, regional, global_pod, int(port))
    assert reaches(rendered, regional, KUBE_DNS, 53, "UDP")
    assert reaches(rendered, regional, KUBE_DNS, 53, "TCP")
    assert not reaches(rendered, regional, global_pod, METRICS_PORT)
    assert not reaches(rendered, regional, KUBE_DNS, int(port))
    for other in JURISDICTIONS:
        other_rendered = overlays[other.lower()]
        assert not reaches(rendered, regional, _pod(other_rendered, "regional"), GRPC_PORT["regional"])
        assert not reaches(rendered, regional, _silo(bases, other, "hospital"), GRPC_PORT["regional"])
    assert not reaches(rendered, regional, STRANGER, 443)
    for rule in _rules(rendered, regional, "egress"):
        assert "ipBlock" not in str(rule["to"])


def test_the_global_admits_regionals_and_reaches_nothing(
    overlays: dict[str, Rendered], bases: dict[str, Rendered]
) -> None:
    rendered = overlays["global"]
    global_pod = _pod(rendered, "global")
    for jurisdiction in JURISDICTIONS:
        regional = _pod(overlays[jurisdiction.lower()], "regional")
        assert admits(rendered, global_pod, regional, GRPC_PORT["global"])
        assert not admits(
            rendered,
            global_pod,
            _silo(bases, jurisdiction, f"jurisfed-{jurisdiction.lower()}"),
            GRPC_PORT["global"],
        )
    assert not admits(rendered, global_pod, STRANGER, GRPC_PORT["global"])
    assert admits(rendered, global_pod, PROMETHEUS, METRICS_PORT)
    for peer in (PROMETHEUS, STRANGER, *(_pod(overlays[j.lower()], "regional") for j in JURISDICTIONS)):
        assert not admits(rendered, global_pod, peer, HEALTH_PORT)
    assert list(_rules(rendered, global_pod, "egress")) == []
    assert not reaches(rendered, global_pod, KUBE_DNS, 53, "UDP")


def test_every_namespace_starts_closed(overlays: dict[str, Rendered], bases: dict[str, Rendered]) -> None:
    for rendered in [*overlays.values(), bases["silo"]]:
        deny = rendered.one("NetworkPolicy", "default-deny")
        assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_silo_base_runs_like_the_aggregators_without_a_port(
    bases: dict[str, Rendered], tmp_path: Path
) -> None:
    rendered = bases["silo"]
    pod, container = _container(rendered, "silo")
    assert container["args"] == ["silo", "--config", "/etc/jurisfed/config/silo.yaml"]
    assert "ports" not in container
    assert "readinessProbe" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for jurisdiction in JURISDICTIONS:
        path = ROOT / "deploy" / "config" / f"silo-{jurisdiction.lower()}.yaml"
        # One file for all silos of a jurisdiction; each silo's environment names its token key id.
        config = load_config(SiloConfig, path, env_prefix="silo", environ={"JURISFED_SILO_TOKEN_KID": "h-1"})
        for file in (
            config.data,
            config.tls.cert,
            config.policy,
            config.policy_keys,
            config.state_dir,
            config.token.key,
        ):
            assert any(
                PurePosixPath(file) == PurePosixPath(m) or PurePosixPath(m) in PurePosixPath(file).parents
                for m in mounts
            ), file
