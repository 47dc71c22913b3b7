"""Compression on both hops with real processes: silos (TensorFlow training) send top-k + int8
updates to their regional, the regional forwards a top-k + int8 aggregate to the global, each
keeping what it has not sent yet (error feedback) in its state directory across restarts; and
hostile compressed payloads are refused over real gRPC, leaving nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from rounds_support import (
    LOCAL_LAYERS,
    SPEC,
    Cluster,
    every_blob_is_accounted_for,
    write_plan,
)
from rounds_support import TestSilo as PlayedSilo

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.signatures import digest_chunks
from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.demo.fleet import Member
from jurisfed.modeling.mlp import Mlp
from jurisfed.store.tier_state import RoundStatus
from jurisfed.tensors import ModelSpec, Weights, subtract
from jurisfed.wire.chunks import encode_compressed, encode_tensors
from jurisfed.wire.v1 import global_pb2, regional_pb2, tensors_pb2
from regional.upstream import RESIDUAL_FILE as REGIONAL_RESIDUAL
from silo.cli import RESIDUAL_FILE as SILO_RESIDUAL

pytestmark = pytest.mark.slow

BIG = Mlp.parse("mlp-16-512-4")  # 10,756 values: large enough that framing does not dominate
BIG_SPEC = BIG.spec()
SILOS = ("eu-silo-1", "eu-silo-2")
TOP_K_INT8 = {"codec": "top-k-int8", "density": 0.01, "block_size": 64}
# At density 0.01 a kept value costs 5 bytes and a scale per 64 of them: about 80x fewer bytes
# than float32 before framing. Asserted with room for chunk framing and headers.
MIN_RATIO = 25


def start_silo(cluster: Cluster, node: str, seed: int) -> Member:
    """A real EU silo process (python -m silo) training BIG on data of its own."""
    identity = Identity("EU", Tier.SILO, node)
    data = cluster.directory / f"{node}.npz"
    if not data.exists():
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(64, BIG.input_dim)).astype(np.float32)
        np.savez(data, features=features, labels=rng.integers(0, BIG.num_classes, 64))
    token, tls = cluster.nodes.token(identity), cluster.tls(identity)
    config: dict[str, object] = {
        "jurisdiction": "EU",
        "regional_address": cluster.addresses["regional-EU"],
        "data": str(data),
        "tls": {"ca_cert": str(tls.ca_cert), "cert": str(tls.cert), "key": str(tls.key)},
        "policy": str(cluster.policies / "eu.yaml"),
        "policy_keys": str(cluster.policies / "keys"),
        "token": {"key": str(token.key), "kid": token.kid},
        "state_dir": str(cluster.directory / node),
        "contract_key": str(cluster.directory / "global" / "contract.key.pub"),
        "seed": seed,
        "exit_when_finished": True,  # exits once its regional says the federation finished
    }
    return cluster.fleet.start(f"{node}-{len(cluster.fleet.members)}", "silo", config, ready=False)


def test_top_k_int8_on_both_hops_commits_with_far_fewer_bytes_and_the_residual_survives_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    sections = {
        "cohort": {"jurisdictions": ["EU"], "min_silos_per_jurisdiction": 2, "max_silos_per_jurisdiction": 2},
        "deadlines": {"silo_s": 60.0, "regional_s": 60.0, "global_s": 90.0},
        "compression": {"silo_to_regional": TOP_K_INT8, "regional_to_global": TOP_K_INT8},
    }
    cluster.start_global(
        plan=str(write_plan(tmp_path / "first.yaml", name="first", rounds=1, **sections)),
        architecture=BIG.name,
    )
    regional = cluster.start_regional("EU", SILOS, min_silos=2)
    silos = [start_silo(cluster, node, seed) for seed, node in enumerate(SILOS)]
    cluster.wait_until_finished()
    cluster.fleet.wait_for_exit(silos, timeout_s=60.0)  # told the federation finished
    carried = BIG_SPEC.without(LOCAL_LAYERS["EU"])
    residual_file = ResidualFile(cluster.directory / "regional-EU" / REGIONAL_RESIDUAL)
    residual_before = residual_file.residual(carried)
    assert residual_before is not None

    # The regional crashes; the next plan's round runs with it restarted, and silos restarted.
    cluster.kill(regional)
    second = write_plan(tmp_path / "second.yaml", name="second", rounds=1, **sections)
    started = cluster.cli("start", "--plan", str(second))
    assert started.returncode == 0, started.stderr
    cluster.restart("regional-EU", "regional", "regional-EU-restarted")
    silos = [start_silo(cluster, node, seed) for seed, node in enumerate(SILOS)]
    cluster.wait_until_finished()

    global_state, regional_state = cluster.state("global"), cluster.state("regional-EU")
    assert [r.state for r in global_state.rounds()] == [RoundStatus.COMMITTED] * 2
    assert [r.state for r in regional_state.rounds()] == [RoundStatus.COMMITTED] * 2
    # Bytes per hop, as each receiving tier recorded them (gRPC framing included).
    for number in (1, 2):
        updates = regional_state.contributions(number)
        assert sorted(c.participant for c in updates) == list(SILOS)
        [aggregate] = global_state.contributions(number)
        assert aggregate.withheld == LOCAL_LAYERS["EU"]
        for contribution in (*updates, aggregate):
            assert 0 < contribution.bytes_received * MIN_RATIO <= contribution.float32_bytes, contribution
        print(
            f"\nround {number}: silo->regional {[c.bytes_received for c in updates]} bytes "
            f"(float32 {updates[0].float32_bytes}); regional->global {aggregate.bytes_received} bytes "
            f"(float32 {aggregate.float32_bytes})"
        )

    # Error feedback across the restart: what the global decoded in both rounds plus what the
    # regional still keeps is exactly the sum of the regional's two mean deltas. Had the restart
    # lost round 1's residual (most of its aggregate, at density 0.01), this would be far off.
    global_blobs = cluster.blobs("global")
    residual = residual_file.residual(carried)
    assert residual is not None
    for tensor in carried.tensors:
        sent = sum(
            global_blobs.get_weights(global_state.contributions(n)[0].content_sha256, carried)[tensor.name]
            for n in (1, 2)
        )
        means = sum(mean_delta(cluster, n, BIG_SPEC)[tensor.name] for n in (1, 2))
        assert float(np.abs(residual_before[tensor.name]).max()) > 0
        np.testing.assert_allclose(sent + residual[tensor.name], means, atol=1e-5, err_msg=tensor.name)
    for node in SILOS:  # each silo keeps its own residual, beside its audit log
        kept = ResidualFile(cluster.directory / node / SILO_RESIDUAL).residual(BIG_SPEC)
        assert kept is not None
        assert all(np.isfinite(values).all() for values in kept.values())
        assert float(np.abs(kept["hidden_1/kernel"]).max()) > 0
    assert every_blob_is_accounted_for(cluster, "regional-EU") == set()
    assert not cluster.fleet.failures()


def mean_delta(cluster: Cluster, number: int, spec: ModelSpec) -> Weights:
    """The regional's mean delta of round `number`: its personalized model minus the round's base."""
    state, blobs = cluster.state("regional-EU"), cluster.blobs("regional-EU")
    base = blobs.get_weights(state.round(number).base_sha256, spec)
    return subtract(blobs.get_weights(state.checkpoint(number).blob_sha256, spec), base)


# --- hostile compressed payloads ----------------------------------------------------------------

CONTRACT_CODEC = Codec(CodecKind.TOP_K_INT8, density=0.25, block_size=2)
HOSTILE_HOP = {"codec": "top-k-int8", "density": 0.25, "block_size": 2}


def honest_chunks(delta: Weights, codec: Codec = CONTRACT_CODEC) -> list[tensors_pb2.TensorChunk]:
    rng = np.random.default_rng(0)
    return list(encode_compressed(SPEC, {t.name: codec.encode(delta[t.name], rng) for t in SPEC.tensors}))


def delta_of(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.normal(scale=0.1, size=t.shape).astype(np.float32) for t in SPEC.tensors}


def altered(change: Callable[[tensors_pb2.TensorChunk], None]) -> list[tensors_pb2.TensorChunk]:
    """The honest stream with its first chunk (hidden_1/kernel: 8 of 32 values kept) altered."""
    chunks = honest_chunks(delta_of(1))
    change(chunks[0])
    return chunks


def _indices(chunk: tensors_pb2.TensorChunk, values: list[int]) -> None:
    chunk.indices = np.array(values, dtype="<u4").tobytes()


HOSTILE: dict[str, tuple[Callable[[], list[tensors_pb2.TensorChunk]], str]] = {
    "raw where the contract says top-k-int8": (
        lambda: list(encode_tensors(SPEC, delta_of(1))),
        "encoding ENCODING_RAW is not allowed here",
    ),
    "a k other than the contract's density keeps": (
        lambda: honest_chunks(delta_of(1), Codec(CodecKind.TOP_K_INT8, density=0.5, block_size=2)),
        "the contract's density 0.25 keeps 8 of 32 values",
    ),
    "a duplicate index": (
        lambda: altered(lambda c: _indices(c, [0, 3, 3, 7, 9, 12, 20, 31])),
        "does not exceed the previous index",
    ),
    "indices going back": (
        lambda: altered(lambda c: _indices(c, [0, 3, 2, 7, 9, 12, 20, 31])),
        "does not exceed the previous index",
    ),
    "an index past the tensor": (
        lambda: altered(lambda c: _indices(c, [0, 3, 5, 7, 9, 12, 20, 32])),
        "out of range for a tensor of 32 values",
    ),
    "an index far past the tensor": (
        lambda: altered(lambda c: _indices(c, [0, 3, 5, 7, 9, 12, 20, 2**32 - 1])),
        "out of range",
    ),
    "more kept pairs than the tensor has values": (
        lambda: altered(lambda c: setattr(c, "kept", 2**40)),
        "beyond the tensor's 32 values",
    ),
    "another block size": (lambda: altered(lambda c: setattr(c, "block_size", 4)), "block_size 4"),
    "fewer values than indices": (
        lambda: altered(lambda c: setattr(c, "data", c.data[:-1])),
        "bytes of ENCODING_SPARSE_INT8_BLOCKS values for 8 indices",
    ),
    "a scale missing": (lambda: altered(lambda c: setattr(c, "scales", c.scales[:-4])), "scales"),
    "a NaN scale": (
        lambda: altered(lambda c: setattr(c, "scales", np.full(4, np.nan, dtype="<f4").tobytes())),
        "block scales must be finite",
    ),
    "a shape of a trillion values": (
        lambda: altered(lambda c: c.shape.__setitem__(0, 10**12)),
        "shape",
    ),
    "a tensor left out": (lambda: honest_chunks(delta_of(1))[1:], "stream ended before"),
}


def send(silo: PlayedSilo, round_number: int, chunks: list[tensors_pb2.TensorChunk], key: str) -> bool:
    header = regional_pb2.UpdateHeader(
        round=round_number,
        example_count=50,
        idempotency_key=key,
        train_loss=0.5,
        content_signature=silo.signer.sign(round_number, digest_chunks(chunks)),
    )
    messages = [regional_pb2.UpdateMessage(header=header)]
    messages += [regional_pb2.UpdateMessage(chunk=c) for c in chunks]
    response: regional_pb2.SubmitUpdateResponse = silo.stub.SubmitUpdate(iter(messages), timeout=10.0)
    return response.accepted


def test_hostile_compressed_updates_are_refused_over_grpc_and_leave_nothing_behind(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=1,
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        compression={"silo_to_regional": HOSTILE_HOP, "regional_to_global": HOSTILE_HOP},
    )
    cluster.start_global(plan=str(plan))
    cluster.start_regional("EU", ["hostile", "honest"], min_silos=1)  # the round closes at its deadline
    hostile, honest = cluster.silo("EU", "hostile"), cluster.silo("EU", "honest")
    task = hostile.next_round(0)
    hostile.fetch(task.round, task.base_model_sha256)
    for index, (case, (make, words)) in enumerate(HOSTILE.items()):
        with pytest.raises(grpc.RpcError) as refused:
            send(hostile, task.round, make(), key=f"hostile-{index}")
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (case, refused.value.details())
        assert words in (refused.value.details() or ""), (case, refused.value.details())
    honest.fetch(task.round, task.base_model_sha256)
    assert send(honest, task.round, honest_chunks(delta_of(2)), key="honest-1")
    cluster.wait_for(
        "the round to close at the regional",
        lambda: [r.state for r in cluster.state("regional-EU").rounds()] == [RoundStatus.COMMITTED],
    )

    state = cluster.state("regional-EU")
    assert [c.participant for c in state.contributions(1)] == ["honest"]
    assert len(state.refusals(1)) == len(HOSTILE)
    assert every_blob_is_accounted_for(cluster, "regional-EU") == set()
    # What the regional kept of the honest update is exactly what its chunks decode to.
    kept = cluster.blobs("regional-EU").get_weights(state.contributions(1)[0].content_sha256, SPEC)
    rng = np.random.default_rng(0)
    for tensor in SPEC.tensors:
        expected = CONTRACT_CODEC.encode(delta_of(2)[tensor.name], rng).decode().reshape(tensor.shape)
        np.testing.assert_array_equal(kept[tensor.name], expected)
    assert not cluster.fleet.failures()


def test_hostile_compressed_aggregates_are_refused_by_the_global(cluster: Cluster, tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=1,
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        compression={"silo_to_regional": {"codec": "raw"}, "regional_to_global": HOSTILE_HOP},
    )
    cluster.start_global(plan=str(plan))
    eu = cluster.regional_played("EU")
    task = eu.next_round(0)
    eu.fetch(task)
    withheld = ("head/bias",)
    sent = SPEC.without(withheld)

    def submit(chunks: list[tensors_pb2.TensorChunk], key: str, compression: str = "top-k-int8") -> bool:
        header = global_pb2.AggregateHeader(
            round=task.round,
            cohort_size=5,
            example_total=100,
            idempotency_key=key,
            withheld_tensors=withheld,
            policy_sha256=eu.policy_sha256,
            compression=compression,
            content_signature=eu.signer.sign(task.round, digest_chunks(chunks)),
        )
        messages = [global_pb2.AggregateMessage(header=header)]
        messages += [global_pb2.AggregateMessage(chunk=c) for c in chunks]
        response: global_pb2.SubmitAggregateResponse = eu.stub.SubmitAggregate(iter(messages), timeout=10.0)
        return response.accepted

    def encoded(seed: int) -> dict[str, EncodedTensor]:
        rng, delta = np.random.default_rng(seed), delta_of(seed)
        return {t.name: CONTRACT_CODEC.encode(delta[t.name], rng) for t in sent.tensors}

    def aggregate(seed: int) -> list[tensors_pb2.TensorChunk]:
        return list(encode_compressed(sent, encoded(seed)))

    duplicate = aggregate(3)
    _indices(duplicate[0], [0, 3, 3, 7, 9, 12, 20, 31])
    beyond = aggregate(3)
    beyond[0].kept = 31
    for chunks, key, compression, code in (
        (duplicate, "dup", "top-k-int8", grpc.StatusCode.INVALID_ARGUMENT),
        (beyond, "kept", "top-k-int8", grpc.StatusCode.INVALID_ARGUMENT),
        (aggregate(3), "int8", "int8", grpc.StatusCode.FAILED_PRECONDITION),  # not the contract's codec
    ):
        with pytest.raises(grpc.RpcError) as refused:
            submit(chunks, key, compression)
        assert refused.value.code() is code, refused.value.details()
    assert submit(aggregate(4), "honest")
    cluster.wait_until_finished()
    state = cluster.state("global")
    assert [r.state for r in state.rounds()] == [RoundStatus.COMMITTED]
    [contribution] = state.contributions(1)
    # What the global kept is exactly what the honest chunks decode to, the local layer absent.
    kept = cluster.blobs("global").get_weights(contribution.content_sha256, sent)
    for name, tensor in encoded(4).items():
        np.testing.assert_array_equal(kept[name], tensor.decode().reshape(sent.tensor(name).shape))
    assert every_blob_is_accounted_for(cluster, "global") == set()
