"""A content-addressed blob directory: each blob is a file named by the SHA-256 of its bytes.

Checkpoints and personalized models live here; the tier's state (tier_state.py) maps a
checkpoint version to the name of its blob, so restoring version N gives back the exact bytes,
and the exact hash, that were committed. A blob is written atomically (write_atomically:
temporary file, fsync, rename, fsync of the directory), so after a crash a name holds its
whole content or does not exist; a leftover temporary file is never listed as a blob. Every
read hashes the bytes again and refuses a blob whose content no longer matches its name.

Model weights are stored in one canonical layout, for every tensor in spec order its name in
UTF-8 followed by its values as little-endian float32: the blob's name is then exactly
`jurisfed.tensors.weights_sha256` of the weights, the model hash announcements, contracts and
audit records already carry. Reading it back needs the ModelSpec, which fixes every length.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import grpc
import numpy as np

from jurisfed.errors import InvalidInput, JurisfedError, NotFound
from jurisfed.store.files import write_atomically
from jurisfed.tensors import ModelSpec, Weights

_NAME = re.compile(r"[0-9a-f]{64}")
_FLOAT = np.dtype("<f4")
# Blobs never change once written; read-only files say so to anyone looking at the directory.
_BLOB_MODE = 0o444


class BlobCorrupted(JurisfedError):
    """A stored blob's bytes no longer hash to its name (disk fault, or an edit behind our back)."""

    status = grpc.StatusCode.DATA_LOSS


class BlobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        """Store `data` and return its name (SHA-256, lowercase hex).

        Idempotent: storing bytes already present writes nothing. A blob found corrupted under
        that name is replaced by the good bytes.
        """
        name = hashlib.sha256(data).hexdigest()
        path = self.directory / name
        if path.exists() and _sha256_of_file(path) == name:
            return name
        write_atomically(path, data, mode=_BLOB_MODE)
        return name

    def get(self, name: str) -> bytes:
        """The bytes stored under `name`; NotFound if absent, BlobCorrupted if they do not hash to it."""
        path = self.directory / _checked(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {name} in {self.directory}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != name:
            raise BlobCorrupted(
                f"blob {name} in {self.directory} is corrupted: its {len(data)} bytes hash to {actual}; "
                "refusing to use it"
            )
        return data

    def exists(self, name: str) -> bool:
        """Whether a blob of that name is stored (its content is checked only by `get`)."""
        return (self.directory / _checked(name)).is_file()

    def names(self) -> list[str]:
        """Every stored blob's name, sorted; temporary files of unfinished writes are not blobs."""
        return sorted(p.name for p in self.directory.iterdir() if _NAME.fullmatch(p.name) and p.is_file())

    def put_weights(self, spec: ModelSpec, weights: Weights) -> str:
        """Store `weights` in the canonical layout; the name equals `weights_sha256(spec, weights)`."""
        return self.put(weights_blob(spec, weights))

    def get_weights(self, name: str, spec: ModelSpec) -> Weights:
        """The weights stored under `name`, checked against their hash and against `spec`."""
        return weights_from_blob(spec, self.get(name), name=name)


def weights_blob(spec: ModelSpec, weights: Weights) -> bytes:
    """The canonical bytes of `weights`: per tensor in spec order, its name then its float32 values."""
    spec.check(weights)
    parts: list[bytes] = []
    for tensor in spec.tensors:
        parts.append(tensor.name.encode())
        parts.append(np.ascontiguousarray(weights[tensor.name], dtype=_FLOAT).tobytes())
    return b"".join(parts)


def weights_from_blob(spec: ModelSpec, data: bytes, *, name: str = "") -> Weights:
    """The inverse of `weights_blob`; InvalidInput if `data` is not laid out for `spec`."""
    where = f"blob {name}" if name else "blob"
    expected = sum(len(t.name.encode()) + _FLOAT.itemsize * t.size for t in spec.tensors)
    if len(data) != expected:
        raise InvalidInput(
            f"{where} holds {len(data)} bytes; a model of architecture {spec.architecture!r} takes {expected}"
        )
    weights: Weights = {}
    offset = 0
    for tensor in spec.tensors:
        label = tensor.name.encode()
        if data[offset : offset + len(label)] != label:
            raise InvalidInput(
                f"{where} is not a model of architecture {spec.architecture!r}: "
                f"tensor {tensor.name!r} is not where that architecture puts it"
            )
        offset += len(label)
        values = np.frombuffer(data, dtype=_FLOAT, count=tensor.size, offset=offset)
        weights[tensor.name] = values.astype(np.float32).reshape(tensor.shape)  # a writable copy
        offset += _FLOAT.itemsize * tensor.size
    return weights


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a blob name (64 lowercase hex digits of a SHA-256)")
    return name


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
