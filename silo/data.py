"""A silo's local training data, read from the files that sit next to it.

Two formats are understood, chosen by suffix:

- `.npz`: a numpy archive with a 2-D numeric array `features` [examples, features] and a 1-D
  integer array `labels` [examples]. Loaded with `allow_pickle=False`: an archive holding
  Python objects is refused, never unpickled.
- `.csv`: a header row naming the columns; the `label` column holds integer class indices and
  every other column is a numeric feature, in file order.

Anything that would silently train on garbage (a missing column, text in a numeric column, a
NaN, arrays of different lengths, no data at all) is a `ConfigError` naming the file and,
for CSV, the line and column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from jurisfed.errors import ConfigError

FEATURES_ARRAY = "features"
LABELS_ARRAY = "labels"
LABEL_COLUMN = "label"
SUFFIXES = (".npz", ".csv")
# Bump when the meaning of the schema description changes, so old and new hashes never collide.
SCHEMA_VERSION = "jurisfed.silo.schema/v1"

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LocalDataset:
    """Examples as training sees them: float32 features [n, d] and int64 class indices [n]."""

    features: Features
    labels: Labels

    def __post_init__(self) -> None:
        _check(self.features, self.labels, "dataset")

    @property
    def example_count(self) -> int:
        return int(self.labels.shape[0])

    @property
    def feature_count(self) -> int:
        return int(self.features.shape[1])


def load_dataset(path: Path) -> LocalDataset:
    """Read a silo's data file (`.npz` or `.csv`); raise ConfigError on anything unusable."""
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(
            f"{path}: unknown data format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: data file does not exist")
    if path.suffix.lower() == ".npz":
        features, labels = _read_npz(path)
    else:
        features, labels = _read_csv(path)
    _check(features, labels, str(path))
    return LocalDataset(features, labels)


def schema_sha256(dataset: LocalDataset) -> str:
    """A digest of the data's shape of meaning, not its values: same schema, same digest.

    It covers the feature count, the dtypes and what the labels are (non-negative class
    indices). The set of labels a silo happens to hold is deliberately left out: under label
    skew it differs between silos and from round to round without the schema changing; the
    label *range* is checked against the model (`num_classes`) when training starts.
    """
    description = {
        "schema": SCHEMA_VERSION,
        "feature_count": dataset.feature_count,
        "feature_dtype": str(dataset.features.dtype),
        "label_dtype": str(dataset.labels.dtype),
        "labels": "class indices, non-negative integers",
    }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_npz(path: Path) -> tuple[Features, Labels]:
    # np.load would also accept a bare .npy array or try to unpickle other files: check first.
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path}: not a readable .npz archive (not a zip of numpy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = sorted(archive.files)
            for name in (FEATURES_ARRAY, LABELS_ARRAY):
                if name not in present:
                    raise ConfigError(f"{path}: no array {name!r} (the archive holds {present})")
            raw_features = archive[FEATURES_ARRAY]
            raw_labels = archive[LABELS_ARRAY]
    except ConfigError:
        raise
    except ValueError as error:  # object arrays need pickle, which is refused
        raise ConfigError(f"{path}: unreadable .npz archive ({error})") from error
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ConfigError(f"{path}: not a readable .npz archive ({error})") from error
    return _features_from_array(raw_features, path), _labels_from_array(raw_labels, path)


def _features_from_array(raw: npt.NDArray[np.generic], path: Path) -> Features:
    if raw.ndim != 2:
        raise ConfigError(
            f"{path}: {FEATURES_ARRAY!r} must be 2-D [examples, features], got shape {raw.shape}"
        )
    if raw.dtype == np.bool_ or not (
        np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
    ):
        raise ConfigError(f"{path}: {FEATURES_ARRAY!r} must hold numbers, got dtype {raw.dtype}")
    return raw.astype(np.float32)


def _labels_from_array(raw: npt.NDArray[np.generic], path: Path) -> Labels:
    if raw.ndim != 1:
        raise ConfigError(f"{path}: {LABELS_ARRAY!r} must be 1-D [examples], got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.integer) and raw.dtype != np.bool_:
        return raw.astype(np.int64)
    if np.issubdtype(raw.dtype, np.floating):
        values = raw.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"{path}: {LABELS_ARRAY!r} contains NaN or infinite values")
        if not np.all(values == np.round(values)):
            raise ConfigError(f"{path}: {LABELS_ARRAY!r} must be integer class indices, found fractions")
        return values.astype(np.int64)
    raise ConfigError(f"{path}: {LABELS_ARRAY!r} must hold integer class indices, got dtype {raw.dtype}")


def _read_csv(path: Path) -> tuple[Features, Labels]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty file; expected a header row with a {LABEL_COLUMN!r} column")
            columns = [name.strip() for name in header]
            label_index = _label_index(columns, path)
            feature_columns = [(i, name) for i, name in enumerate(columns) if i != label_index]
            if not feature_columns:
                raise ConfigError(f"{path}: no feature columns besides {LABEL_COLUMN!r}")
            rows: list[list[float]] = []
            labels: list[int] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines carry no example
                where = f"{path}: line {reader.line_num}"
                if len(row) != len(columns):
                    raise ConfigError(f"{where} has {len(row)} fields, the header has {len(columns)}")
                labels.append(_parse_label(row[label_index], where))
                rows.append([_parse_number(row[i], name, where) for i, name in feature_columns])
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error})") from error
    except csv.Error as error:
        raise ConfigError(f"{path}: malformed CSV ({error})") from error
    if not rows:
        raise ConfigError(f"{path}: no data rows after the header")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def _label_index(columns: list[str], path: Path) -> int:
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{path}: duplicate column names {duplicates}")
    if LABEL_COLUMN not in columns:
        raise ConfigError(f"{path}: no {LABEL_COLUMN!r} column in the header {columns}")
    return columns.index(LABEL_COLUMN)


def _parse_number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}, column {column!r}: {text.strip()!r} is not a number") from None
    if math.isnan(value):
        raise ConfigError(f"{where}, column {column!r}: NaN is not a usable value")
    if math.isinf(value):
        raise ConfigError(f"{where}, column {column!r}: infinity is not a usable value")
    return value


def _parse_label(text: str, where: str) -> int:
    value = _parse_number(text, LABEL_COLUMN, where)
    if not value.is_integer():
        raise ConfigError(f"{where}, column {LABEL_COLUMN!r}: {text.strip()!r} is not an integer class index")
    return int(value)


def _check(features: Features, labels: Labels, source: str) -> None:
    if features.dtype != np.float32 or features.ndim != 2:
        raise ConfigError(
            f"{source}: features must be float32 [examples, features], got {features.dtype}{features.shape}"
        )
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise ConfigError(f"{source}: labels must be int64 [examples], got {labels.dtype}{labels.shape}")
    if features.shape[0] != labels.shape[0]:
        raise ConfigError(f"{source}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise ConfigError(f"{source}: no examples")
    if features.shape[1] == 0:
        raise ConfigError(f"{source}: examples have no features")
    if not np.all(np.isfinite(features)):
        rows = np.unique(np.nonzero(~np.isfinite(features))[0])
        raise ConfigError(
            f"{source}: NaN or infinite feature values in {len(rows)} example(s), first at index {rows[0]}"
        )
    if np.any(labels < 0):
        raise ConfigError(f"{source}: labels must be non-negative class indices, found {int(labels.min())}")
