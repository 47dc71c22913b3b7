"""Codecs as a round contract names them: one spelling each, and what each encodes to."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.compression.codec import DEFAULT_BLOCK_SIZE, Codec, CodecKind, EncodedTensor
from jurisfed.compression.int8 import dequantize_blocks


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"kind": CodecKind.INT8, "density": 0.5}, "int8 keeps every value; density must stay 1.0"),
        ({"kind": CodecKind.TOP_K, "block_size": 64}, "top-k has no blocks; block_size must stay 256"),
        ({"kind": CodecKind.TOP_K, "density": 0.0}, r"top-k: density must be in \(0, 1\], got 0.0"),
        ({"kind": CodecKind.TOP_K_INT8, "density": 2.0}, r"density must be in \(0, 1\], got 2.0"),
        ({"kind": CodecKind.INT8_BLOCKS, "block_size": 0}, "block_size must be from 1 to 65536, got 0"),
        ({"kind": CodecKind.TOP_K_INT8, "density": 0.1, "block_size": 1 << 17}, "got 131072"),
    ],
)
def test_settings_a_codec_cannot_use_or_out_of_range_are_refused(
    settings: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Codec(**settings)  # type: ignore[arg-type]


def test_codecs_are_values_a_contract_can_compare() -> None:
    assert Codec(CodecKind.TOP_K_INT8, density=0.01) == Codec(CodecKind.TOP_K_INT8, 0.01, DEFAULT_BLOCK_SIZE)
    assert Codec(CodecKind.TOP_K_INT8, density=0.01) != Codec(CodecKind.TOP_K_INT8, density=0.02)
    assert CodecKind("top-k-int8") is CodecKind.TOP_K_INT8


@pytest.mark.parametrize(
    ("codec", "payload_bytes"),
    [
        (Codec(CodecKind.RAW), 4 * 10_000),
        (Codec(CodecKind.INT8), 10_000 + 4),
        (Codec(CodecKind.INT8_BLOCKS), 10_000 + 4 * 40),  # 40 blocks of 256 (the last shorter)
        (Codec(CodecKind.TOP_K, density=0.01), 100 * (4 + 4)),
        (Codec(CodecKind.TOP_K_INT8, density=0.01, block_size=64), 100 * (4 + 1) + 4 * 2),
    ],
    ids=lambda value: value.kind.value if isinstance(value, Codec) else str(value),
)
def test_each_codec_sends_the_bytes_its_layout_promises(codec: Codec, payload_bytes: int) -> None:
    values = np.random.default_rng(1).standard_normal((100, 100)).astype(np.float32)

    encoded = codec.encode(values, np.random.default_rng(2))

    assert encoded.payload_bytes == payload_bytes
    assert encoded.decode().shape == (10_000,)


def test_top_k_int8_keeps_the_largest_values_within_one_step_of_their_block_and_zeros_the_rest() -> None:
    values = np.random.default_rng(3).standard_normal(50_000).astype(np.float32)
    codec = Codec(CodecKind.TOP_K_INT8, density=0.01, block_size=64)

    encoded = codec.encode(values, np.random.default_rng(4))
    decoded = encoded.decode()

    largest = np.sort(np.argsort(-np.abs(values))[:500])
    assert encoded.indices is not None
    np.testing.assert_array_equal(encoded.indices, largest)
    steps = np.repeat(encoded.scales, 64)[:500]
    assert np.all(np.abs(decoded[largest] - values[largest]) < steps)
    np.testing.assert_array_equal(
        decoded[largest], dequantize_blocks(encoded.values.astype(np.int8), encoded.scales, 64)
    )
    assert np.count_nonzero(np.delete(decoded, largest)) == 0


def test_raw_decodes_to_the_values_themselves() -> None:
    values = np.random.default_rng(5).standard_normal((3, 7)).astype(np.float32)

    np.testing.assert_array_equal(
        Codec(CodecKind.RAW).encode(values, np.random.default_rng()).decode(), values.reshape(-1)
    )


def test_an_encoded_tensor_whose_parts_disagree_is_refused() -> None:
    top_k = Codec(CodecKind.TOP_K, density=0.5)
    values = np.ones(5, np.float32)
    indices = np.arange(5, dtype="<u4")

    with pytest.raises(ValueError, match="5 values for 2 expected"):
        EncodedTensor(top_k, 4, values, indices=indices)
    with pytest.raises(ValueError, match="indices must be given exactly for sparse codecs"):
        EncodedTensor(Codec(CodecKind.RAW), 5, values, indices=indices)
    with pytest.raises(ValueError, match="0 scales, expected 1"):
        EncodedTensor(Codec(CodecKind.INT8), 5, values.astype(np.int8))


def test_a_configuration_names_a_codec_by_its_kind_and_the_settings_it_uses() -> None:
    assert Codec.named("top-k-int8", density=0.01) == Codec(CodecKind.TOP_K_INT8, density=0.01)
    assert Codec.named("int8-blocks", block_size=64) == Codec(CodecKind.INT8_BLOCKS, block_size=64)
    assert Codec.named("int8") == Codec(CodecKind.INT8)
    with pytest.raises(ValueError, match="codec 'top-1' is unknown; one of raw, int8, int8-blocks, top-k"):
        Codec.named("top-1")
    with pytest.raises(ValueError, match=r"int8-blocks keeps every value; density must stay 1\.0"):
        Codec.named("int8-blocks", density=0.01)
