"""A round's intake with a durable tier behind it: an update is handed to `keep` once staged and
valid, and folded only if `keep` recorded it as new; one that broke off is neither kept nor folded;
contributions recorded before a restart are folded again with `restore` and count once."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from jurisfed.aggregation.intake import IncompleteUpload, Keep, RoundClosed, RoundIntake, UploadInterrupted
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.errors import Unauthenticated, WrongState
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.v1 import tensors_pb2

SPEC = ModelSpec("test", (TensorSpec("dense/kernel", (4, 3)), TensorSpec("dense/bias", (3,))))
RAW = Codec(CodecKind.RAW)


def constant(value: float) -> Weights:
    return {t.name: np.full(t.shape, value, dtype=np.float32) for t in SPEC.tensors}


def chunks(value: float) -> list[tensors_pb2.TensorChunk]:
    return list(encode_tensors(SPEC, constant(value)))


class Ledger:
    """The tier's side of `keep`: what was recorded, by sender."""

    def __init__(self) -> None:
        self.kept: dict[str, Weights] = {}

    def keep_as(self, sender: str) -> Keep:
        def keep(update: Weights) -> bool:
            if sender in self.kept:
                return False
            self.kept[sender] = {name: values.copy() for name, values in update.items()}
            return True

        return keep


def test_an_update_is_kept_before_it_is_folded_and_a_recorded_one_is_not_folded_again() -> None:
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2)
    ledger = Ledger()
    ledger.kept["b"] = constant(7.0)  # recorded, say, by a process that crashed before folding it
    assert not intake.receive("a", "k-a", 1.0, chunks(1.0), keep=ledger.keep_as("a")).duplicate
    assert intake.receive("b", "k-b", 1.0, chunks(7.0), keep=ledger.keep_as("b")).duplicate
    np.testing.assert_array_equal(ledger.kept["a"]["dense/bias"], 1.0)
    mean = intake.close()
    assert mean is not None
    np.testing.assert_allclose(mean["dense/bias"], 1.0)  # b's 7.0 was not folded here
    assert intake.contributors == ("a",)


def test_a_stream_that_breaks_off_is_neither_kept_nor_folded() -> None:
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2)
    ledger = Ledger()

    def dying() -> Iterator[tensors_pb2.TensorChunk]:
        yield chunks(9.0)[0]
        raise grpc.RpcError()  # what gRPC raises when the sender's connection dies mid-stream

    with pytest.raises(UploadInterrupted, match="broke off before it was complete"):
        intake.receive("a", "k-a", 1.0, dying(), keep=ledger.keep_as("a"))
    with pytest.raises(IncompleteUpload, match="stream ended before"):
        intake.receive("a", "k-a", 1.0, chunks(9.0)[:1], keep=ledger.keep_as("a"))
    assert ledger.kept == {}
    assert intake.receive("a", "k-a", 1.0, chunks(2.0), keep=ledger.keep_as("a")).accepted
    mean = intake.close()
    assert mean is not None
    np.testing.assert_allclose(mean["dense/kernel"], 2.0)
    assert [r.code for r in intake.rejections] == ["CANCELLED", "INVALID_ARGUMENT"]


def test_a_stream_cut_short_is_incomplete_even_though_its_signature_fails_too() -> None:
    """A killed sender's stream may simply end; the signature check at its end then fails, but
    what the tier records is that the upload was incomplete (the silo dropped out), not refused."""
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2)

    def cut_short() -> Iterator[tensors_pb2.TensorChunk]:
        yield chunks(9.0)[0]
        raise Unauthenticated("the content signature does not verify")  # as verified_chunks ends

    def complete_but_forged() -> Iterator[tensors_pb2.TensorChunk]:
        yield from chunks(9.0)
        raise Unauthenticated("the content signature does not verify")

    with pytest.raises(IncompleteUpload, match="stream ended before"):
        intake.receive("a", "k-a", 1.0, cut_short())
    with pytest.raises(Unauthenticated, match="does not verify"):
        intake.receive("a", "k-a", 1.0, complete_but_forged())
    assert intake.close() is None


def test_restored_contributions_count_once_and_a_late_one_is_refused_as_stale() -> None:
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2)
    intake.restore("a", "k-a", 3.0, constant(1.0))
    with pytest.raises(WrongState, match="already contributed"):
        intake.restore("a", "k-a", 3.0, constant(1.0))
    assert intake.receive("a", "k-a", 3.0, chunks(1.0)).duplicate  # the sender's retry
    intake.receive("b", "k-b", 1.0, chunks(5.0))
    mean = intake.close()
    assert mean is not None
    np.testing.assert_allclose(mean["dense/bias"], (3 * 1.0 + 5.0) / 4)
    with pytest.raises(RoundClosed, match="arrived too late"):
        intake.receive("c", "k-c", 1.0, chunks(1.0))
