"""The one exception tree of jurisfed. Each class knows the gRPC status its peers receive.

Servicers raise these; `jurisfed.rpc.interceptors` maps them to statuses in one place, so a
peer gets a readable message and never a stack trace.
"""

from __future__ import annotations

import grpc


class JurisfedError(Exception):
    """Base of every error jurisfed raises on purpose."""

    status = grpc.StatusCode.INTERNAL


class InvalidInput(JurisfedError):
    """The peer sent something malformed: wrong dtype, shape, offset, a NaN, a bad field."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class WrongState(JurisfedError):
    """The request is well formed but does not fit now: another round, a closed round."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class TooLarge(JurisfedError):
    """The peer sent more than the contract allows."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotAllowed(JurisfedError):
    """An authenticated peer asked for something its identity or policy does not permit."""

    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(JurisfedError):
    """The peer's identity could not be established."""

    status = grpc.StatusCode.UNAUTHENTICATED


class NotFound(JurisfedError):
    """The peer asked for something that does not exist (a round, a checkpoint)."""

    status = grpc.StatusCode.NOT_FOUND


class ConfigError(JurisfedError):
    """A configuration file or command-line value is invalid; raised at start-up."""
