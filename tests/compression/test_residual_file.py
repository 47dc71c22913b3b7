"""A sender's residual on file: what top-k has not sent survives a restart (a new ResidualFile on
the same path), is taken back when an encoding was never delivered, and a residual of other
tensors is not used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.tensors import ModelSpec, TensorSpec, Weights

SPEC = ModelSpec("test", (TensorSpec("a", (40, 5), "float32"), TensorSpec("b", (7,), "float32")))
TOP_K_INT8 = Codec(CodecKind.TOP_K_INT8, density=0.05, block_size=4)


def delta(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.normal(size=t.shape).astype(np.float32) for t in SPEC.tensors}


def decoded(encoded: Mapping[str, EncodedTensor]) -> Weights:
    return {name: tensor.decode().reshape(SPEC.tensor(name).shape) for name, tensor in encoded.items()}


def test_what_was_not_sent_is_sent_later_also_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "residual.bin"
    rng = np.random.default_rng(0)
    received = {t.name: np.zeros(t.shape, dtype=np.float32) for t in SPEC.tensors}
    total = {t.name: np.zeros(t.shape, dtype=np.float32) for t in SPEC.tensors}
    for round_number in range(6):
        sender = ResidualFile(path)  # a fresh process every round: only the file carries over
        update = delta(round_number)
        encoded = sender.encode(SPEC, update, TOP_K_INT8, rng)
        for name, values in decoded(encoded).items():
            received[name] += values
            total[name] += update[name]
    residual = ResidualFile(path).residual(SPEC)
    assert residual is not None
    assert float(np.abs(residual["a"]).max()) > 0.1  # most of each update is still to be sent
    for name, expected in total.items():
        # Everything sent plus everything still kept is everything there was to send.
        np.testing.assert_allclose(received[name] + residual[name], expected, atol=1e-5)


def test_a_lost_restart_would_show(tmp_path: Path) -> None:
    """The same rounds with the file removed in between do not add up: the check above can fail."""
    path = tmp_path / "residual.bin"
    rng = np.random.default_rng(0)
    first, second = delta(1), delta(2)
    sent_first = decoded(ResidualFile(path).encode(SPEC, first, TOP_K_INT8, rng))
    path.unlink()
    sent_second = decoded(ResidualFile(path).encode(SPEC, second, TOP_K_INT8, rng))
    residual = ResidualFile(path).residual(SPEC)
    assert residual is not None
    gap = first["a"] + second["a"] - (sent_first["a"] + sent_second["a"] + residual["a"])
    assert float(np.abs(gap).max()) > 0.1


def test_an_undelivered_encoding_is_kept_whole_for_the_next_round(tmp_path: Path) -> None:
    path = tmp_path / "residual.bin"
    sender = ResidualFile(path)
    update = delta(3)
    encoded = sender.encode(SPEC, update, TOP_K_INT8, np.random.default_rng(1))
    sender.undelivered(SPEC, encoded)
    residual = ResidualFile(path).residual(SPEC)
    assert residual is not None
    for name in update:
        np.testing.assert_allclose(residual[name], update[name], atol=1e-6)


@pytest.mark.parametrize("kind", [CodecKind.RAW, CodecKind.INT8, CodecKind.INT8_BLOCKS])
def test_unbiased_codecs_keep_no_residual(tmp_path: Path, kind: CodecKind) -> None:
    path = tmp_path / "residual.bin"
    sender = ResidualFile(path)
    encoded = sender.encode(SPEC, delta(4), Codec(kind), np.random.default_rng(2))
    sender.undelivered(SPEC, encoded)
    assert not path.exists()
    assert {name: tensor.codec for name, tensor in encoded.items()} == dict.fromkeys(encoded, Codec(kind))


def test_a_residual_of_other_tensors_is_not_used(tmp_path: Path) -> None:
    """A policy that now keeps tensor b local: the residual on file no longer fits, start from zero."""
    path = tmp_path / "residual.bin"
    ResidualFile(path).encode(SPEC, delta(5), TOP_K_INT8, np.random.default_rng(3))
    fewer = SPEC.without(["b"])
    assert ResidualFile(path).residual(fewer) is None
    only_a = {"a": delta(6)["a"]}
    encoded = ResidualFile(path).encode(fewer, only_a, TOP_K_INT8, np.random.default_rng(4))
    residual = ResidualFile(path).residual(fewer)
    assert residual is not None
    np.testing.assert_allclose(residual["a"] + decoded(encoded)["a"], only_a["a"], atol=1e-6)
