"""Versioned checkpoints on disk: what is saved loads back bit for bit, and a file changed
behind the store's back is refused rather than trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jurisfed.errors import InvalidInput, NotFound
from jurisfed.store.checkpoints import CheckpointStore
from jurisfed.tensors import ModelSpec, TensorSpec, Weights, weights_sha256

SPEC = ModelSpec("mlp-4-3-2", (TensorSpec("dense/kernel", (4, 3)), TensorSpec("dense/bias", (3,))))


def weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}


def test_saved_weights_load_back_exactly(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints")
    saved = weights(1)
    store.save(3, SPEC, saved)

    loaded = CheckpointStore(tmp_path / "checkpoints").load(3, SPEC)  # a fresh store, as after a restart

    assert list(loaded) == [t.name for t in SPEC.tensors]
    for name, array in saved.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], array)


def test_versions_are_listed_in_order_and_other_files_are_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.versions() == []
    for version in (10, 0, 2):
        store.save(version, SPEC, weights(version))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert store.versions() == [0, 2, 10]


def test_the_manifest_records_the_hash_of_the_weights(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    saved = weights(2)
    info = store.save(1, SPEC, saved)

    assert info.sha256 == weights_sha256(SPEC, saved)
    assert store.info(1) == info
    assert (info.version, info.architecture) == (1, "mlp-4-3-2")
    manifest = json.loads((tmp_path / "round-000001.json").read_text())
    assert manifest == {"version": 1, "sha256": info.sha256, "architecture": "mlp-4-3-2"}


def test_saving_a_version_again_replaces_it(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, SPEC, weights(1))
    info = store.save(1, SPEC, weights(2))
    assert store.info(1).sha256 == info.sha256
    np.testing.assert_array_equal(store.load(1, SPEC)["dense/bias"], weights(2)["dense/bias"])


def test_an_edited_checkpoint_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, SPEC, weights(1))
    tampered = weights(1)
    tampered["dense/bias"][0] += 1.0
    np.savez(tmp_path / "round-000001.npz", **tampered)

    with pytest.raises(NotFound, match="does not match its recorded hash"):
        store.load(1, SPEC)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, SPEC, weights(1))
    npz = tmp_path / "round-000001.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # a crash of the disk, not of the store

    with pytest.raises(NotFound, match="checkpoint 1"):
        store.load(1, SPEC)


def test_saving_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, SPEC, weights(1))
    store.save(2, SPEC, weights(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-000001.json",
        "round-000001.npz",
        "round-000002.json",
        "round-000002.npz",
    ]


def test_weights_that_do_not_fit_the_model_are_not_saved(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    wrong = weights(1)
    wrong["dense/bias"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(InvalidInput, match="dense/bias"):
        store.save(1, SPEC, wrong)
    assert store.versions() == []
    assert list(tmp_path.iterdir()) == []


def test_a_missing_version_is_not_found(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, SPEC, weights(1))
    with pytest.raises(NotFound, match="no checkpoint 7"):
        store.load(7, SPEC)
    with pytest.raises(NotFound, match="no checkpoint 7"):
        store.info(7)
