"""Split scikit-learn's bundled digits into jurisdictions and silos, one file per silo.

The demo needs data that behaves like a real federation's: each jurisdiction sees a different
mix of labels (so a jurisdiction's own model can beat the global one on its own population),
while silos inside a jurisdiction look alike. For each class, the share each jurisdiction gets
is drawn from Dirichlet(alpha): small alpha, strong skew. The held-out test examples of that
class are divided with the *same* shares, so a jurisdiction's test split follows its own label
mix, and together the jurisdictions' test splits are the whole held-out set. A draw that
starves a jurisdiction, or lets one hold so much that it looks like the whole federation, is
redrawn from the same generator, so the result still depends on the seed alone.

Files written (training files alternate between `.npz` and `.csv`, so both silo adapters run):

    out_dir/test.npz                          the whole held-out set
    out_dir/<J>/test.npz                      jurisdiction J's test split
    out_dir/<J>/<silo>/train.npz | train.csv  one silo's training data

This module must stay free of TensorFlow: `jurisfed demo` imports it before any trainer.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from jurisfed.errors import ConfigError
from jurisfed.rounds import TrainingConfig

# Tuned with the demo's exact round math (10 rounds, 3 jurisdictions x 3 silos, weighted
# means, personalized P_j = G + D_j, int8 between regional and global) over seeds 0-9 and two
# seed schemes: global accuracy 0.916-0.953 on the held-out set, and each jurisdiction's own
# model at least as accurate as the global one on its own test split in 60 of 60 cases (one
# tie; +5.9 points on average). Alpha 0.1 is strong skew, each jurisdiction holding most of
# 3-4 classes; at alpha 0.3-1.0 the personalization gain shrinks to test-split noise and
# loses on some seeds. The FedProx term is mild: it changes little but keeps the proximal
# path exercised end to end.
DEFAULT_ALPHA = 0.1
DEFAULT_TEST_FRACTION = 0.25
DEFAULT_SEED = 0
DEMO_ROUNDS = 10
DEMO_JURISDICTIONS = ("EU", "IN", "US")
DEMO_SILOS_PER_JURISDICTION = 3
DEMO_TRAINING = TrainingConfig(epochs=5, batch_size=8, learning_rate=0.2, proximal_mu=0.01)

# Guards against Dirichlet draws that starve a jurisdiction: each must receive at least this
# fraction of an even share of the training examples, and every silo and test split a floor.
# A draw that lets one jurisdiction hold far more than an even share is redrawn too: such a
# jurisdiction holds most classes, looks like the whole federation, and has nothing to personalize.
MIN_SHARE_OF_EVEN = 0.5
MAX_SHARE_OF_EVEN = 1.3
MIN_SILO_EXAMPLES = 30
MIN_TEST_EXAMPLES = 20
MAX_DRAWS = 1000

FEATURES_ARRAY = "features"
LABELS_ARRAY = "labels"
LABEL_COLUMN = "label"
NUM_CLASSES = 10
# Digits pixels are integers 0..16.
PIXEL_MAX = 16.0

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SiloPartition:
    jurisdiction: str
    name: str
    train_path: Path
    example_count: int
    label_histogram: tuple[int, ...]


@dataclass(frozen=True)
class JurisdictionPartition:
    name: str
    silos: tuple[SiloPartition, ...]
    test_path: Path
    # The Dirichlet draw: this jurisdiction's share of each class, indexed by label.
    class_shares: tuple[float, ...]
    train_label_histogram: tuple[int, ...]
    test_label_histogram: tuple[int, ...]

    @property
    def train_example_count(self) -> int:
        return sum(self.train_label_histogram)

    @property
    def test_example_count(self) -> int:
        return sum(self.test_label_histogram)


@dataclass(frozen=True)
class Partition:
    out_dir: Path
    # The whole held-out set; the union of the jurisdictions' test splits.
    test_path: Path
    feature_count: int
    num_classes: int
    jurisdictions: tuple[JurisdictionPartition, ...]

    def jurisdiction(self, name: str) -> JurisdictionPartition:
        for jurisdiction in self.jurisdictions:
            if jurisdiction.name == name:
                return jurisdiction
        raise ConfigError(f"jurisdiction {name!r} is not part of this partition")

    @property
    def silos(self) -> tuple[SiloPartition, ...]:
        return tuple(silo for jurisdiction in self.jurisdictions for silo in jurisdiction.silos)


def partition_digits(
    out_dir: Path,
    jurisdictions: Sequence[str],
    silo_counts: Sequence[int],
    *,
    alpha: float,
    seed: int,
    test_fraction: float,
) -> Partition:
    """Write the demo's data files under `out_dir`; the same arguments write the same files."""
    _check_arguments(jurisdictions, silo_counts, alpha, test_fraction)
    features, labels = _load_digits()
    rng = np.random.default_rng(seed)
    train_index, test_index = _stratified_split(labels, test_fraction, rng)
    shares = _draw_shares(
        labels[train_index], labels[test_index], len(jurisdictions), max(silo_counts), alpha, rng
    )
    train_parts = _divide_by_class(train_index, labels, shares, rng)
    test_parts = _divide_by_class(test_index, labels, shares, rng)

    out_dir.mkdir(parents=True, exist_ok=True)
    test_path = out_dir / "test.npz"
    write_split(test_path, features[test_index], labels[test_index])
    described: list[JurisdictionPartition] = []
    silo_number = 0
    for j, name in enumerate(jurisdictions):
        silos: list[SiloPartition] = []
        members = rng.permutation(train_parts[j])
        for k, share in enumerate(np.array_split(members, silo_counts[j])):
            silo_name = f"{name.lower()}-silo-{k + 1}"
            suffix = ".npz" if silo_number % 2 == 0 else ".csv"
            silo_number += 1
            path = out_dir / name / silo_name / f"train{suffix}"
            part = np.sort(share)
            write_split(path, features[part], labels[part])
            silos.append(SiloPartition(name, silo_name, path, len(part), _histogram(labels[part])))
        jurisdiction_test = out_dir / name / "test.npz"
        write_split(jurisdiction_test, features[test_parts[j]], labels[test_parts[j]])
        described.append(
            JurisdictionPartition(
                name=name,
                silos=tuple(silos),
                test_path=jurisdiction_test,
                class_shares=tuple(float(s) for s in shares[:, j]),
                train_label_histogram=_histogram(labels[train_parts[j]]),
                test_label_histogram=_histogram(labels[test_parts[j]]),
            )
        )
    return Partition(out_dir, test_path, features.shape[1], NUM_CLASSES, tuple(described))


def write_split(path: Path, features: FloatArray, labels: IntArray) -> None:
    """Write examples as `.npz` (arrays features, labels) or `.csv` (pixel columns, label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        # Keyword names are the archive's array names, FEATURES_ARRAY and LABELS_ARRAY.
        np.savez(path, features=features.astype(np.float32), labels=labels.astype(np.int64))
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"pixel_{i}" for i in range(features.shape[1])), LABEL_COLUMN])
        for row, label in zip(features, labels, strict=True):
            # 9 significant digits give back the exact float32.
            writer.writerow([*(f"{value:.9g}" for value in row), int(label)])


def load_split(path: Path) -> tuple[FloatArray, IntArray]:
    """Read a test split written by `partition_digits` (the `.npz` layout only)."""
    if not path.is_file():
        raise ConfigError(f"{path}: test split does not exist")
    with np.load(path, allow_pickle=False) as archive:
        return archive[FEATURES_ARRAY].astype(np.float32), archive[LABELS_ARRAY].astype(np.int64)


def _check_arguments(
    jurisdictions: Sequence[str], silo_counts: Sequence[int], alpha: float, test_fraction: float
) -> None:
    if not jurisdictions:
        raise ConfigError("at least one jurisdiction is needed")
    if len(set(jurisdictions)) != len(jurisdictions):
        raise ConfigError(f"jurisdictions must be distinct, got {list(jurisdictions)}")
    for name in jurisdictions:
        if not name or not name.isalnum():
            raise ConfigError(
                f"jurisdiction {name!r} must be a non-empty alphanumeric name (it becomes a folder)"
            )
    if len(silo_counts) != len(jurisdictions) or min(silo_counts) < 1:
        raise ConfigError(
            f"silo_counts must give at least 1 silo for each of {list(jurisdictions)}, "
            f"got {list(silo_counts)}"
        )
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")


def _load_digits() -> tuple[FloatArray, IntArray]:
    # Imported here, not at the top: sklearn.datasets takes seconds to import (scipy), and
    # the demo reads this module's constants long before it partitions anything.
    from sklearn.datasets import load_digits  # noqa: PLC0415

    bunch = load_digits()
    features = (np.asarray(bunch.data, dtype=np.float32) / np.float32(PIXEL_MAX)).astype(np.float32)
    return features, np.asarray(bunch.target, dtype=np.int64)


def _stratified_split(
    labels: IntArray, test_fraction: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Hold out `test_fraction` of every class (rounded), so the test set keeps the label mix."""
    train: list[IntArray] = []
    test: list[IntArray] = []
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = round(len(members) * test_fraction)
        test.append(members[:held_out])
        train.append(members[held_out:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _draw_shares(
    train_labels: IntArray,
    test_labels: IntArray,
    jurisdiction_count: int,
    most_silos: int,
    alpha: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """[class, jurisdiction] shares, each class's row from Dirichlet(alpha); redrawn if it starves one."""
    train_counts = np.bincount(train_labels, minlength=NUM_CLASSES)
    test_counts = np.bincount(test_labels, minlength=NUM_CLASSES)
    even_share = train_counts.sum() / jurisdiction_count
    floor = max(MIN_SHARE_OF_EVEN * even_share, MIN_SILO_EXAMPLES * most_silos)
    if floor * jurisdiction_count > train_counts.sum():
        raise ConfigError(
            f"{jurisdiction_count} jurisdictions x up to {most_silos} silos cannot each get "
            f"{MIN_SILO_EXAMPLES} of the {int(train_counts.sum())} training examples"
        )
    for _ in range(MAX_DRAWS):
        shares = rng.dirichlet(np.full(jurisdiction_count, alpha), size=NUM_CLASSES)
        train_sizes = (_allocate(train_counts, shares)).sum(axis=0)
        test_sizes = (_allocate(test_counts, shares)).sum(axis=0)
        balanced = floor <= train_sizes.min() and train_sizes.max() <= MAX_SHARE_OF_EVEN * even_share
        if balanced and test_sizes.min() >= MIN_TEST_EXAMPLES:
            return shares
    raise ConfigError(
        f"no Dirichlet({alpha}) draw in {MAX_DRAWS} gave every jurisdiction at least {floor:.0f} training "
        f"and {MIN_TEST_EXAMPLES} test examples; raise alpha or use fewer jurisdictions or silos"
    )


def _allocate(counts: IntArray, shares: npt.NDArray[np.float64]) -> IntArray:
    """[class, jurisdiction] example counts: each class's count split by its shares, summing exactly."""
    allocation = np.zeros(shares.shape, dtype=np.int64)
    for label, count in enumerate(counts):
        bounds = np.round(np.cumsum(shares[label]) * count).astype(np.int64)
        bounds[-1] = count
        allocation[label] = np.diff(bounds, prepend=0)
    return allocation


def _divide_by_class(
    index: IntArray, labels: IntArray, shares: npt.NDArray[np.float64], rng: np.random.Generator
) -> list[IntArray]:
    """Split example indices into one disjoint part per jurisdiction following the class shares."""
    allocation = _allocate(np.bincount(labels[index], minlength=NUM_CLASSES), shares)
    parts: list[list[IntArray]] = [[] for _ in range(shares.shape[1])]
    for label in range(NUM_CLASSES):
        members = rng.permutation(index[labels[index] == label])
        bounds = np.cumsum(allocation[label])[:-1]
        for j, piece in enumerate(np.split(members, bounds)):
            parts[j].append(piece)
    return [np.sort(np.concatenate(part)) for part in parts]


def _histogram(labels: IntArray) -> tuple[int, ...]:
    return tuple(int(c) for c in np.bincount(labels, minlength=NUM_CLASSES))
