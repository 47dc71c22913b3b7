"""Provision the local federation of deploy/compose.yaml: a throwaway CA, certificates, demo data.

Run once by compose's `init` service, in the image, as the image's non-root user:

    python /deploy/compose_init.py /var/lib/jurisfed

It writes, under the given directory:

- ``pki/ca/`` the federation CA (never mounted into a node) and ``crl/crl.pem`` its revocation list;
- ``pki/<node>/`` ca.crt, tls.crt, tls.key of each node, as `jurisfed.auth.pki.issue` lays them out;
- ``tokens/<node>/token.key`` the key each caller signs its tokens with (the operator's is
  ``compose-operator.key``: the operator's command line takes the key id from the file name);
- ``keysets/<aggregator>/<role>/<kid>.pem`` the callers each aggregator trusts: the global its
  regionals and the operator, each regional its own silos and the operator;
- ``data/<silo>/train.npz`` or ``train.csv``: the demo's non-IID split of scikit-learn's digits.

Each node's certificate names the addresses it is dialled at in compose and in Kubernetes
(``global.jurisfed-global``, ``regional.jurisfed-eu``, ...) and 127.0.0.1 for its health probe;
each token key id is the node's name. A second run leaves a provisioned directory as it is.
Like `jurisfed demo`, this CA is for a rehearsal: a real federation's CA key never sits next to
the nodes' keys, and each node makes its own keys (`jurisfed pki request`, `token-key`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.pki import create_ca, issue
from jurisfed.auth.revocation import publish_crl
from jurisfed.auth.token_keys import generate_token_key, install_public_key
from jurisfed.auth.tokens import Role
from jurisfed.demo.partition import DEFAULT_ALPHA, DEFAULT_SEED, DEFAULT_TEST_FRACTION, partition_digits

# Silos per jurisdiction, as `jurisfed demo` runs them: as many as each example policy requires
# behind an aggregate that leaves the jurisdiction (EU five, IN and US three).
SILOS = {"EU": 5, "IN": 3, "US": 3}
GLOBAL_DNS = "global.jurisfed-global"
OPERATOR_KID = "compose-operator"


def regional_dns(jurisdiction: str) -> str:
    return f"regional.jurisfed-{jurisdiction.lower()}"


def silo_name(jurisdiction: str, number: int) -> str:
    return f"{jurisdiction.lower()}-silo-{number}"


@dataclass(frozen=True)
class Node:
    """One certificate to issue: the directory under pki/ that compose mounts at /etc/jurisfed/tls."""

    directory: str
    identity: Identity
    dns_names: tuple[str, ...]


def _served(name: str) -> tuple[str, ...]:
    """A server's names: the short one compose and Kubernetes resolve, and Kubernetes' longer ones."""
    return (name, f"{name}.svc", f"{name}.svc.cluster.local", "localhost")


def nodes() -> list[Node]:
    """Every node of the compose federation, the operator's certificate included."""
    listed = [
        Node("global", Identity(GLOBAL_JURISDICTION, Tier.GLOBAL, "global-1"), _served(GLOBAL_DNS)),
        Node("operator", Identity(GLOBAL_JURISDICTION, Tier.OPERATOR, "compose-operator"), ("localhost",)),
    ]
    for jurisdiction, count in SILOS.items():
        regional = f"regional-{jurisdiction.lower()}"
        listed.append(
            Node(
                regional, Identity(jurisdiction, Tier.REGIONAL, regional), _served(regional_dns(jurisdiction))
            )
        )
        for number in range(1, count + 1):
            name = silo_name(jurisdiction, number)
            listed.append(Node(name, Identity(jurisdiction, Tier.SILO, name), ("localhost",)))
    return listed


def token_key_path(out: Path, node: Node) -> Path:
    name = f"{OPERATOR_KID}.key" if node.identity.tier is Tier.OPERATOR else "token.key"
    return out / "tokens" / node.directory / name


def kid(node: Node) -> str:
    return OPERATOR_KID if node.identity.tier is Tier.OPERATOR else node.directory


def provision(out: Path) -> bool:
    """Write everything under `out`; False (and nothing touched) when already provisioned."""
    pki = out / "pki"
    if (pki / "ca" / "ca.crt").exists():
        return False
    ca = create_ca(pki / "ca", common_name="jurisfed compose federation CA")
    crl, _ = publish_crl(ca)
    (out / "crl").mkdir(parents=True, exist_ok=True)
    shutil.copy2(crl, out / "crl" / "crl.pem")
    listed = nodes()
    public_keys = {}
    for node in listed:
        issue(ca, node.identity, pki / node.directory, dns_names=node.dns_names, ip_addresses=("127.0.0.1",))
        if node.identity.tier is not Tier.GLOBAL:  # the global calls no one
            public_keys[node.directory] = generate_token_key(token_key_path(out, node)).public_key()
    for node in listed:
        tier, jurisdiction = node.identity.tier, node.identity.jurisdiction
        if tier is Tier.OPERATOR:
            trusted_by = ["global", *(f"regional-{j.lower()}" for j in SILOS)]
        elif tier is Tier.REGIONAL:
            trusted_by = ["global"]
        elif tier is Tier.SILO:
            trusted_by = [f"regional-{jurisdiction.lower()}"]
        else:
            continue
        for aggregator in trusted_by:
            install_public_key(
                out / "keysets" / aggregator, Role(tier.value), kid(node), public_keys[node.directory]
            )
    split = out / "data" / ".split"
    partition = partition_digits(
        split,
        tuple(SILOS),
        tuple(SILOS.values()),
        alpha=DEFAULT_ALPHA,
        seed=DEFAULT_SEED,
        test_fraction=DEFAULT_TEST_FRACTION,
    )
    for silo in partition.silos:
        # The demo writes every other silo as CSV; here each silo's directory holds train.npz or
        # train.csv, and the compose file names the one it has.
        target = out / "data" / silo.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(silo.train_path, target / silo.train_path.name)
    shutil.rmtree(split)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="directory to provision (a volume)")
    args = parser.parse_args(argv)
    if provision(args.out):
        print(f"provisioned {len(nodes())} certificates and {sum(SILOS.values())} silos' data in {args.out}")
    else:
        print(f"{args.out} is already provisioned; remove the volume to start over")
    return 0


if __name__ == "__main__":
    sys.exit(main())
