"""Server interceptors: the one place where exceptions become gRPC statuses.

Servicers raise `jurisfed.errors.JurisfedError` subclasses and never catch them; the peer
receives the error's status and message. Anything else is a bug: it is logged here with its
traceback and a short reference id, and the peer sees only ``internal error (reference id)``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from jurisfed.errors import JurisfedError

_LOG = logging.getLogger("jurisfed.rpc")

# A handler behaviour as gRPC calls it: (request or request iterator, context) -> response(s).
Behavior = Callable[[Any, grpc.ServicerContext], Any]


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Maps exceptions raised by handlers of every RPC kind to gRPC statuses."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        behavior: Behavior | None = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        if behavior is None or getattr(behavior, "experimental_non_blocking", False):
            # Non-blocking behaviours (the health service's Watch) take a third argument and
            # report through callbacks; they are gRPC's own code and raise nothing of ours.
            return handler
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_single(handler.unary_unary, method), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_single(handler.stream_unary, method), **serializers)
        return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, method), **serializers)


def _single(behavior: Behavior, method: str) -> Behavior:
    """Wrap a behaviour that returns one response."""

    def mapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as error:
            _fail(error, context, method)

    return mapped


def _streaming(behavior: Behavior, method: str) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """Wrap a behaviour that returns an iterator of responses; errors may come mid-stream."""

    def mapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as error:
            _fail(error, context, method)

    return mapped


def _fail(error: Exception, context: grpc.ServicerContext, method: str) -> NoReturn:
    """End the call with the status `error` deserves; always raises."""
    if _is_abort(error, context):
        # The handler called context.abort itself: gRPC already holds its status.
        raise error
    if isinstance(error, grpc.RpcError) and not context.is_active():
        # The peer cancelled or the deadline passed while the handler read requests.
        _LOG.debug("%s: call ended by the peer before the handler finished", method)
        raise error
    if isinstance(error, JurisfedError):
        message = str(error) or type(error).__name__
        _LOG.info("%s failed with %s: %s", method, error.status.name, message)
        context.abort(error.status, message)
    reference = secrets.token_hex(4)
    _LOG.error("%s: unexpected error (reference %s)", method, reference, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {reference})")
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _is_abort(error: Exception, context: grpc.ServicerContext) -> bool:
    """Whether `error` is what `context.abort` raises: a bare Exception after setting a code."""
    return type(error) is Exception and not error.args and context.code() is not None
