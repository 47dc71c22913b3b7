"""The content-addressed blob store: a blob is named by the SHA-256 of its bytes, reads check
that name, and model weights stored as blobs come back bit for bit under the model hash the
rest of the federation already uses."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from jurisfed.errors import InvalidInput, NotFound
from jurisfed.modeling.mlp import Mlp
from jurisfed.store.blobs import BlobCorrupted, BlobStore, weights_blob, weights_from_blob
from jurisfed.tensors import weights_sha256

MODEL = Mlp(input_dim=8, hidden_units=(5,), num_classes=3)


def test_a_blob_is_named_by_its_sha256_and_reads_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"model bytes \x00\xff" * 100

    name = store.put(data)

    assert name == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "blobs" / name).read_bytes() == data
    assert BlobStore(tmp_path / "blobs").get(name) == data  # a fresh store, as after a restart
    assert store.exists(name)
    assert store.names() == [name]


def test_putting_the_same_bytes_twice_writes_nothing_the_second_time(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    name = store.put(b"same")
    before = (tmp_path / name).stat()

    assert store.put(b"same") == name

    after = (tmp_path / name).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert store.names() == [name]


def test_a_corrupted_blob_is_refused_with_its_name_and_actual_hash(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    name = store.put(b"checkpoint 3")
    path = tmp_path / name
    os.chmod(path, 0o644)
    path.write_bytes(b"checkpoint 4")  # an edit behind the store's back, or a disk fault

    with pytest.raises(
        BlobCorrupted,
        match=rf"blob {name} .* is corrupted: .* hash to {hashlib.sha256(b'checkpoint 4').hexdigest()}",
    ):
        store.get(name)


def test_putting_good_bytes_again_repairs_a_corrupted_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    name = store.put(b"checkpoint 3")
    path = tmp_path / name
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")

    assert store.put(b"checkpoint 3") == name

    assert store.get(name) == b"checkpoint 3"


def test_blobs_are_read_only_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    name = store.put(b"immutable")
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o444


def test_a_missing_blob_is_not_found_and_a_malformed_name_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    absent = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(NotFound, match=f"no blob {absent}"):
        store.get(absent)
    assert not store.exists(absent)
    for bad in ("../etc/passwd", absent.upper(), absent[:-1], ""):
        with pytest.raises(InvalidInput, match="not a blob name"):
            store.get(bad)


def test_temporary_files_of_unfinished_writes_are_not_listed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    name = store.put(b"whole")
    (tmp_path / f".{name}.abc123").write_bytes(b"half")  # what a write killed mid-way leaves
    (tmp_path / "README").write_text("not a blob")

    assert store.names() == [name]


def test_weights_stored_as_a_blob_are_named_by_the_model_hash_and_come_back_exactly(tmp_path: Path) -> None:
    spec = MODEL.spec()
    weights = MODEL.initial_weights(seed=7)
    weights["hidden_1/bias"] = np.linspace(-1, 1, 5, dtype=np.float32)
    store = BlobStore(tmp_path)

    name = store.put_weights(spec, weights)
    loaded = BlobStore(tmp_path).get_weights(name, spec)

    assert name == weights_sha256(spec, weights)
    assert list(loaded) == [t.name for t in spec.tensors]
    for tensor in spec.tensors:
        assert loaded[tensor.name].dtype == np.float32
        assert loaded[tensor.name].shape == tensor.shape
        np.testing.assert_array_equal(loaded[tensor.name], weights[tensor.name])
    loaded["head/bias"][0] = 5.0  # the loaded arrays are the caller's to change
    assert store.get_weights(name, spec)["head/bias"][0] == 0.0


def test_equal_weights_give_equal_bytes() -> None:
    spec = MODEL.spec()
    first = weights_blob(spec, MODEL.initial_weights(seed=1))
    second = weights_blob(spec, {k: v.copy() for k, v in MODEL.initial_weights(seed=1).items()})
    assert first == second
    assert first != weights_blob(spec, MODEL.initial_weights(seed=2))


def test_a_blob_of_another_architecture_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    other = Mlp(input_dim=8, hidden_units=(4,), num_classes=3)
    name = store.put_weights(other.spec(), other.initial_weights(seed=0))

    with pytest.raises(
        InvalidInput, match=f"blob {name} holds .* bytes; a model of architecture 'mlp-8-5-3'"
    ):
        store.get_weights(name, MODEL.spec())

    renamed = weights_blob(MODEL.spec(), MODEL.initial_weights(seed=0)).replace(b"head/bias", b"tail/bias")
    with pytest.raises(InvalidInput, match="tensor 'head/bias' is not where"):
        weights_from_blob(MODEL.spec(), renamed)
