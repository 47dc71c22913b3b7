"""Errors of the audit log, in the project's exception tree (each knows its gRPC status)."""

from __future__ import annotations

import grpc

from jurisfed.errors import JurisfedError


class AuditUnavailable(JurisfedError):
    """An event could not be written durably (full disk, I/O error): nothing may be acknowledged."""

    status = grpc.StatusCode.UNAVAILABLE


class AuditIntegrityError(JurisfedError):
    """A log, checkpoint or bundle does not verify: it was edited, truncated or forked."""

    status = grpc.StatusCode.DATA_LOSS


class LogForked(AuditIntegrityError):
    """A peer presented a checkpoint that does not extend the one this witness holds."""
