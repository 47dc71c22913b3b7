"""The silo's data adapters: real files in a temporary directory, every refusal with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jurisfed.errors import ConfigError
from silo.data import LocalDataset, load_dataset, schema_sha256

FEATURES = np.array([[0.0, 0.5, 1.0], [0.25, 0.125, 0.75], [1.0, 0.0, 0.0625]], dtype=np.float32)
LABELS = np.array([3, 0, 9], dtype=np.int64)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_npz_round_trip_gives_float32_features_and_int64_labels(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, features=(FEATURES * 16).astype(np.uint8), labels=LABELS.astype(np.int32))

    dataset = load_dataset(path)

    assert dataset.features.dtype == np.float32
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.features, (FEATURES * 16).astype(np.uint8).astype(np.float32))
    np.testing.assert_array_equal(dataset.labels, LABELS)
    assert (dataset.example_count, dataset.feature_count) == (3, 3)


def test_csv_round_trip_keeps_column_order_wherever_the_label_column_is(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "train.csv",
        "a, label ,b,c\n0,3,0.5,1\n0.25,0,0.125,0.75\n\n1,9,0,0.0625\n",
    )

    dataset = load_dataset(path)

    np.testing.assert_array_equal(dataset.features, FEATURES)
    np.testing.assert_array_equal(dataset.labels, LABELS)


def test_csv_and_npz_of_the_same_examples_load_identically(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", features=FEATURES, labels=LABELS)
    rows = "\n".join(
        ",".join([*(f"{v:.9g}" for v in row), str(label)])
        for row, label in zip(FEATURES, LABELS, strict=True)
    )
    write_csv(tmp_path / "train.csv", "x0,x1,x2,label\n" + rows + "\n")

    from_npz = load_dataset(tmp_path / "train.npz")
    from_csv = load_dataset(tmp_path / "train.csv")

    np.testing.assert_array_equal(from_npz.features, from_csv.features)
    np.testing.assert_array_equal(from_npz.labels, from_csv.labels)
    assert schema_sha256(from_npz) == schema_sha256(from_csv)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train.csv", "a,b\n1,2\n", "no 'label' column"),
        ("train.csv", "a,label\n1,2\n0.5,x7\n", "line 3, column 'label': 'x7' is not a number"),
        ("train.csv", "a,b,label\n1,2,0\n1,oops,1\n", "line 3, column 'b': 'oops' is not a number"),
        ("train.csv", "a,b,label\n1,nan,0\n", "line 2, column 'b': NaN"),
        ("train.csv", "a,b,label\n1,inf,0\n", "line 2, column 'b': infinity"),
        ("train.csv", "a,b,label\n1,2,0\n1,2\n", "line 3 has 2 fields, the header has 3"),
        ("train.csv", "a,b,label\n", "no data rows"),
        ("train.csv", "", "empty file"),
        ("train.csv", "label\n1\n", "no feature columns"),
        ("train.csv", "a,a,label\n1,2,0\n", "duplicate column names ['a']"),
        ("train.csv", "a,label\n1,2.5\n", "'2.5' is not an integer class index"),
        ("train.csv", "a,label\n1,-1\n", "non-negative class indices"),
    ],
)
def test_bad_csv_is_refused_naming_file_line_and_column(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = write_csv(tmp_path / name, content)

    with pytest.raises(ConfigError) as refused:
        load_dataset(path)

    assert message in str(refused.value)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": FEATURES}, "no array 'labels'"),
        ({"labels": LABELS}, "no array 'features'"),
        ({"features": FEATURES, "labels": LABELS[:2]}, "3 feature rows but 2 labels"),
        (
            {"features": np.where(FEATURES == 1.0, np.nan, FEATURES), "labels": LABELS},
            "NaN or infinite feature",
        ),
        ({"features": FEATURES[0], "labels": LABELS}, "must be 2-D"),
        ({"features": FEATURES, "labels": LABELS.reshape(3, 1)}, "must be 1-D"),
        ({"features": np.zeros((0, 3), np.float32), "labels": np.zeros(0, np.int64)}, "no examples"),
        ({"features": np.zeros((3, 0), np.float32), "labels": LABELS}, "no features"),
        ({"features": FEATURES.astype(str), "labels": LABELS}, "must hold numbers"),
        ({"features": FEATURES, "labels": LABELS + 0.5}, "found fractions"),
    ],
)
def test_bad_npz_is_refused_with_what_is_wrong(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, **arrays)

    with pytest.raises(ConfigError, match=r"train\.npz") as refused:
        load_dataset(path)

    assert message in str(refused.value)


def test_npz_holding_python_objects_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, features=np.array([{"x": 1}], dtype=object), labels=LABELS)

    with pytest.raises(ConfigError, match=r"unreadable \.npz"):
        load_dataset(path)


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    path.write_bytes(b"features,labels\n")

    with pytest.raises(ConfigError, match=r"not a readable \.npz"):
        load_dataset(path)


def test_missing_file_and_unknown_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(tmp_path / "absent.npz")
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"unknown data format '\.parquet'; expected one of \.npz, \.csv"):
        load_dataset(tmp_path / "train.parquet")


def test_schema_hash_ignores_values_and_labels_but_not_feature_count() -> None:
    base = LocalDataset(FEATURES, LABELS)
    other_values = LocalDataset(FEATURES[::-1] * 2, np.array([1, 1, 1], dtype=np.int64))
    wider = LocalDataset(np.zeros((3, 4), np.float32), LABELS)

    assert schema_sha256(base) == schema_sha256(other_values)
    assert schema_sha256(base) != schema_sha256(wider)
    # Pinned: a change here means every registered silo's schema hash changes (bump SCHEMA_VERSION).
    assert schema_sha256(base) == "97c1d8acf4bbab5598e102b67887ffbfb142f639d13a751e1f41c0c3e2a9b3e5"


def test_a_dataset_built_in_memory_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="2 labels"):
        LocalDataset(FEATURES, LABELS[:2])
    with pytest.raises(ConfigError, match="must be float32"):
        LocalDataset(FEATURES.astype(np.float64), LABELS)  # type: ignore[arg-type]
