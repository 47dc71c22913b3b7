"""A real regional aggregator plus a raw byte sink, served over mTLS in a process of its own.

bench_ingest.py starts this as a child process: it is the same server stack a regional runs
(RegionalAggregator + regional_service + jurisfed.rpc.server.serve), with one extra service,
the byte sink, a client-streaming RPC that only counts the bytes it receives. The child opens
one local round itself with a long deadline and speaks a line protocol on stdout:

    ready <address>                  serving, round open; nothing received yet
    closed silos=<n> ...             the round closed (every registered silo contributed)

It exits when its stdin closes (the parent went away) or when it is killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from jurisfed.audit.tier import open_tier_log
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.policy.guard import PolicyGuard, load_tier_policy
from jurisfed.policy.model import Policy
from jurisfed.policy.signing import approve_file, generate_key_pair, load_private_key
from jurisfed.rounds import TrainingConfig
from jurisfed.rpc.server import Service, serve
from jurisfed.tensors import ModelSpec, TensorSpec
from regional.aggregator import RegionalAggregator
from regional.local_round import RoundTerms
from regional.servicer import regional_service

JURISDICTION = "EU"
ROUND = 1
ROUND_DEADLINE_S = 3600.0
SINK_SERVICE = "jurisfed.bench.ByteSink"
SINK_METHOD = f"/{SINK_SERVICE}/Absorb"
_WIDTH = 1000
EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "deploy" / "policies" / "eu.yaml"


def bench_spec(floats: int) -> ModelSpec:
    """A dense layer of `floats` float32 values (a multiple of 1000) and nothing else."""
    if floats % _WIDTH:
        raise ValueError(f"floats must be a multiple of {_WIDTH}, not {floats}")
    return ModelSpec("bench", (TensorSpec("dense/kernel", (floats // _WIDTH, _WIDTH)),))


def byte_sink_service() -> Service:
    """A client-streaming RPC taking raw bytes (identity deserializer) and answering their count."""

    def absorb(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        for message in requests:
            total += len(message)
        return total.to_bytes(8, "big")

    handler = grpc.method_handlers_generic_handler(
        SINK_SERVICE,
        {"Absorb": grpc.stream_unary_rpc_method_handler(absorb)},  # no (de)serializers: bytes as is
    )
    return Service(name=SINK_SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--floats", type=int, required=True, help="model size in float32 values")
    parser.add_argument(
        "--tls-dir", type=Path, required=True, help="ca.crt, tls.crt, tls.key of the regional"
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where personalized models are saved")
    parser.add_argument("--max-concurrent-uploads", type=int, default=4)
    args = parser.parse_args()

    spec = bench_spec(args.floats)
    identity = Identity(JURISDICTION, Tier.REGIONAL, "regional-bench")
    audit = open_tier_log(args.state_dir, identity, None)  # the real, fsync'd log
    aggregator = RegionalAggregator(
        identity,
        args.state_dir,
        min_silos=1,
        max_concurrent_uploads=args.max_concurrent_uploads,
        audit=audit,
        guard=PolicyGuard(signed_example_policy(args.state_dir), identity, audit),
    )
    base = {t.name: np.full(t.shape, 0.5, dtype=np.float32) for t in spec.tensors}
    with serve(
        [regional_service(aggregator), byte_sink_service()], TlsFiles.in_directory(args.tls_dir)
    ) as server:
        terms = RoundTerms(contract_sha256="be" * 32)
        aggregator.open_round(ROUND, spec, TrainingConfig(), base, ROUND_DEADLINE_S, terms=terms)
        server.set_serving(True)
        # The parent closing our stdin (or dying) ends this process.
        threading.Thread(target=_exit_on_eof, daemon=True).start()
        print(f"ready {server.address}", flush=True)
        closed = aggregator.wait_for_close(threading.Event())
        assert closed is not None  # never stopped
        first = float(closed.mean_delta["dense/kernel"].flat[0]) if closed.mean_delta is not None else None
        print(
            f"closed silos={closed.cohort_size} examples={closed.example_total} mean[0]={first} "
            f"outcome={closed.reason!r}",
            flush=True,
        )
        threading.Event().wait()


def signed_example_policy(directory: Path) -> Policy:
    """The example EU policy, signed by a throwaway approver whose key the regional trusts, so every
    silo registration, update and download is decided by the real guard, as in production."""
    keys = directory / "approver"
    keys.mkdir()
    generate_key_pair(keys / "approver.key.pem", keys / "approver.pem")
    policy_file = directory / "eu.yaml"
    policy_file.write_text(EXAMPLE_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    approve_file(policy_file, load_private_key(keys / "approver.key.pem"), "Bench Approver")
    (keys / "approver.key.pem").unlink()
    return load_tier_policy(policy_file, keys / "approver.pem", jurisdiction=JURISDICTION)


def _exit_on_eof() -> None:
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
