"""A sender's error-feedback residual, kept in one file so it outlives rounds and restarts.

The silo (its update to the regional) and the regional (its aggregate to the global) each own
one: `encode` compresses what the sender sends this round with the round's codec and, for the
top-k codecs, adds the residual left over from earlier rounds and writes the new one before a
byte is sent. `undelivered` takes back an encoding the receiver never got. The file is written
atomically (temporary file, fsync, rename): after a crash it holds the old residual or the new
one, never a mix. It uses the blob layout of jurisfed.store.blobs (per tensor its name, then its
float32 values), so a residual of another model, or of another set of tensors (a policy that
now keeps a layer local), is recognised as such: the sender then starts again from zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jurisfed.compression.codec import Codec, EncodedTensor
from jurisfed.compression.error_feedback import ErrorFeedback
from jurisfed.errors import InvalidInput
from jurisfed.store.blobs import weights_blob, weights_from_blob
from jurisfed.store.files import write_atomically
from jurisfed.tensors import FloatArray, ModelSpec, Weights

log = logging.getLogger("jurisfed.compression")
_MODE = 0o600


class ResidualFile:
    """The error feedback of one sender on one hop, persisted at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._spec: ModelSpec | None = None
        self._feedback: ErrorFeedback | None = None

    def encode(
        self, spec: ModelSpec, values: Mapping[str, FloatArray], codec: Codec, rng: np.random.Generator
    ) -> dict[str, EncodedTensor]:
        """`values` (the tensors of `spec`) encoded with `codec`, tensor by tensor.

        Top-k codecs send values + residual and keep what they did not send, written to the
        file before this returns; the other codecs are unbiased and encode `values` alone.
        """
        spec.check(values)
        if not codec.kind.sparse:
            return {t.name: codec.encode(values[t.name], rng) for t in spec.tensors}
        feedback = self._feedback_for(spec)
        encoded = feedback.compress(values, codec, rng)
        self._save(spec, feedback)
        return encoded

    def undelivered(self, spec: ModelSpec, encoded: Mapping[str, EncodedTensor]) -> None:
        """What `encode` returned never reached the receiver: keep all of it for a later round."""
        if not any(tensor.codec.kind.sparse for tensor in encoded.values()):
            return
        feedback = self._feedback_for(spec)
        feedback.add_back(encoded)
        self._save(spec, feedback)

    def residual(self, spec: ModelSpec) -> Weights | None:
        """The residual on file for `spec`, or None when there is none for it."""
        try:
            return weights_from_blob(spec, self.path.read_bytes(), name=self.path.name)
        except FileNotFoundError:
            return None
        except InvalidInput:
            return None

    def _feedback_for(self, spec: ModelSpec) -> ErrorFeedback:
        if self._feedback is not None and self._spec == spec:
            return self._feedback
        feedback = ErrorFeedback(spec)
        stored = self.residual(spec)
        if stored is not None:
            try:
                feedback.load(stored)
            except InvalidInput as error:
                log.warning("residual on file is unusable; starting from zero", extra={"why": str(error)})
        elif self.path.exists():
            log.warning(
                "residual on file is of another model or other tensors; starting from zero",
                extra={"path": str(self.path), "architecture": spec.architecture},
            )
        self._spec, self._feedback = spec, feedback
        return feedback

    def _save(self, spec: ModelSpec, feedback: ErrorFeedback) -> None:
        write_atomically(self.path, weights_blob(spec, feedback.state()), mode=_MODE)
