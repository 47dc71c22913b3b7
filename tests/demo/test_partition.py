"""The demo's data split: real files, disjoint, reproducible, and skewed between jurisdictions."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jurisfed.demo.partition import (
    DEFAULT_ALPHA,
    DEFAULT_TEST_FRACTION,
    MAX_SHARE_OF_EVEN,
    MIN_SHARE_OF_EVEN,
    MIN_SILO_EXAMPLES,
    Partition,
    load_split,
    partition_digits,
)
from jurisfed.errors import ConfigError
from silo.data import load_dataset

JURISDICTIONS = ("EU", "IN", "US")


def split(out_dir: Path, seed: int = 0) -> Partition:
    return partition_digits(
        out_dir, JURISDICTIONS, (3, 3, 3), alpha=DEFAULT_ALPHA, seed=seed, test_fraction=DEFAULT_TEST_FRACTION
    )


@pytest.fixture(scope="module")
def partition(tmp_path_factory: pytest.TempPathFactory) -> Partition:
    return split(tmp_path_factory.mktemp("digits"))


def examples(features: np.ndarray, labels: np.ndarray) -> Counter[bytes]:
    return Counter(row.tobytes() + bytes([int(label)]) for row, label in zip(features, labels, strict=True))


def distribution(histogram: tuple[int, ...]) -> np.ndarray:
    counts = np.asarray(histogram, dtype=np.float64)
    return counts / counts.sum()


def test_every_file_exists_where_the_layout_says(partition: Partition) -> None:
    out = partition.out_dir
    assert partition.test_path == out / "test.npz"
    for jurisdiction in partition.jurisdictions:
        assert jurisdiction.test_path == out / jurisdiction.name / "test.npz"
        assert jurisdiction.test_path.is_file()
        assert len(jurisdiction.silos) == 3
        for silo in jurisdiction.silos:
            assert silo.train_path.parent == out / jurisdiction.name / silo.name
            assert silo.train_path.is_file()
    assert {silo.train_path.suffix for silo in partition.silos} == {".npz", ".csv"}


def test_silo_files_load_with_the_silo_adapters_and_match_the_description(partition: Partition) -> None:
    for silo in partition.silos:
        data = load_dataset(silo.train_path)
        assert data.example_count == silo.example_count >= MIN_SILO_EXAMPLES
        assert tuple(np.bincount(data.labels, minlength=10)) == silo.label_histogram
        assert data.features.min() >= 0.0
        assert data.features.max() <= 1.0


def test_every_example_is_used_exactly_once(partition: Partition) -> None:
    features, labels = load_digits(return_X_y=True)
    everything = examples((features / 16.0).astype(np.float32), labels)
    training = Counter[bytes]()
    for silo in partition.silos:
        data = load_dataset(silo.train_path)
        training += examples(data.features, data.labels)
    held_out = examples(*load_split(partition.test_path))
    jurisdiction_tests = Counter[bytes]()
    for jurisdiction in partition.jurisdictions:
        jurisdiction_tests += examples(*load_split(jurisdiction.test_path))

    assert max(training.values()) == 1
    assert not set(training) & set(held_out)
    assert training + held_out == everything
    assert jurisdiction_tests == held_out
    assert abs(sum(held_out.values()) / len(labels) - DEFAULT_TEST_FRACTION) < 0.01


def test_the_held_out_set_keeps_every_class(partition: Partition) -> None:
    _, labels = load_split(partition.test_path)

    assert set(np.unique(labels)) == set(range(10))


def test_same_seed_writes_the_same_split_and_another_seed_a_different_one(
    partition: Partition, tmp_path: Path
) -> None:
    again = split(tmp_path / "again")
    other = split(tmp_path / "other", seed=1)

    for first, second in zip(partition.silos, again.silos, strict=True):
        assert first.train_path.relative_to(partition.out_dir) == second.train_path.relative_to(again.out_dir)
        a, b = load_dataset(first.train_path), load_dataset(second.train_path)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
    for first, second in zip(partition.jurisdictions, again.jurisdictions, strict=True):
        np.testing.assert_array_equal(load_split(first.test_path)[1], load_split(second.test_path)[1])
    assert [j.train_label_histogram for j in other.jurisdictions] != [
        j.train_label_histogram for j in partition.jurisdictions
    ]


def test_jurisdictions_have_different_label_mixes_and_their_tests_follow_them(partition: Partition) -> None:
    train = {j.name: distribution(j.train_label_histogram) for j in partition.jurisdictions}
    test = {j.name: distribution(j.test_label_histogram) for j in partition.jurisdictions}

    for i, first in enumerate(JURISDICTIONS):
        for second in JURISDICTIONS[i + 1 :]:
            # Total variation distance between the two label distributions.
            assert 0.5 * np.abs(train[first] - train[second]).sum() > 0.2
        assert 0.5 * np.abs(train[first] - test[first]).sum() < 0.1


def test_silos_of_a_jurisdiction_share_its_examples_evenly(partition: Partition) -> None:
    for jurisdiction in partition.jurisdictions:
        counts = [silo.example_count for silo in jurisdiction.silos]
        assert max(counts) - min(counts) <= 1
        assert sum(counts) == jurisdiction.train_example_count


def test_draws_that_starve_or_crown_a_jurisdiction_are_redrawn(tmp_path: Path) -> None:
    # alpha this small often leaves one jurisdiction almost nothing and another almost everything.
    for seed in range(5):
        partition = partition_digits(
            tmp_path / str(seed), JURISDICTIONS, (3, 3, 3), alpha=0.05, seed=seed, test_fraction=0.25
        )
        even = sum(j.train_example_count for j in partition.jurisdictions) / 3
        for jurisdiction in partition.jurisdictions:
            assert MIN_SHARE_OF_EVEN * even <= jurisdiction.train_example_count <= MAX_SHARE_OF_EVEN * even


@pytest.mark.parametrize(
    ("jurisdictions", "silos", "alpha", "test_fraction", "message"),
    [
        ((), 3, 0.5, 0.25, "at least one jurisdiction"),
        (("EU", "EU"), 3, 0.5, 0.25, "distinct"),
        (("EU", "../x"), 3, 0.5, 0.25, "alphanumeric"),
        (JURISDICTIONS, 0, 0.5, 0.25, "silo_counts"),
        (JURISDICTIONS, 3, 0.0, 0.25, "alpha"),
        (JURISDICTIONS, 3, 0.5, 1.0, "test_fraction"),
        (JURISDICTIONS, 20, 0.5, 0.25, "cannot each get 30"),
    ],
)
def test_impossible_requests_are_refused(
    tmp_path: Path,
    jurisdictions: tuple[str, ...],
    silos: int,
    alpha: float,
    test_fraction: float,
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        partition_digits(
            tmp_path,
            jurisdictions,
            [silos] * len(jurisdictions),
            alpha=alpha,
            seed=0,
            test_fraction=test_fraction,
        )


def test_importing_the_partitioner_loads_neither_tensorflow_nor_scikit_learn() -> None:
    # `jurisfed demo` reads the constants here before any trainer starts; sklearn loads on use.
    probe = "import sys, jurisfed.demo.partition\nsys.exit(bool({'tensorflow', 'sklearn'} & {*sys.modules}))"

    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
