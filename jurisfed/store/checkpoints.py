"""Versioned model checkpoints on disk: one `.npz` per version plus a JSON manifest.

Writes are atomic (temporary file, fsync, rename), so a crash never leaves a half-written
checkpoint under a real name. Loading never unpickles and checks the SHA-256 recorded at
save time, so a corrupted or edited file is refused rather than trained on.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jurisfed.errors import NotFound
from jurisfed.store.files import write_atomically
from jurisfed.tensors import ModelSpec, Weights, weights_sha256

_NAME = re.compile(r"^round-(\d{6})\.json$")


@dataclass(frozen=True)
class CheckpointInfo:
    version: int
    sha256: str
    architecture: str


class CheckpointStore:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, version: int, spec: ModelSpec, weights: Weights) -> CheckpointInfo:
        spec.check(weights)
        info = CheckpointInfo(version, weights_sha256(spec, weights), spec.architecture)
        buffer = io.BytesIO()
        np.savez(buffer, **{t.name: weights[t.name] for t in spec.tensors})
        write_atomically(self._path(version, ".npz"), buffer.getvalue())
        manifest = {"version": version, "sha256": info.sha256, "architecture": info.architecture}
        write_atomically(self._path(version, ".json"), json.dumps(manifest, indent=2).encode())
        return info

    def load(self, version: int, spec: ModelSpec) -> Weights:
        info = self.info(version)
        try:
            with np.load(self._path(version, ".npz"), allow_pickle=False) as archive:
                weights: Weights = {
                    t.name: archive[t.name].astype(np.float32, copy=False) for t in spec.tensors
                }
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise NotFound(f"checkpoint {version} in {self._directory} is corrupted: {error}") from error
        spec.check(weights)
        if weights_sha256(spec, weights) != info.sha256:
            raise NotFound(f"checkpoint {version} in {self._directory} does not match its recorded hash")
        return weights

    def info(self, version: int) -> CheckpointInfo:
        path = self._path(version, ".json")
        if not path.exists():
            raise NotFound(f"no checkpoint {version} in {self._directory}")
        manifest = json.loads(path.read_text())
        return CheckpointInfo(
            int(manifest["version"]), str(manifest["sha256"]), str(manifest["architecture"])
        )

    def versions(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self._directory.iterdir() if (m := _NAME.match(p.name)))

    def _path(self, version: int, suffix: str) -> Path:
        return self._directory / f"round-{version:06d}{suffix}"
