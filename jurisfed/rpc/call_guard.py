"""Admission checks that run before a handler, with the call's real `ServicerContext`.

A gRPC server interceptor sees only the method name and the metadata; the verified peer
certificate is in the `ServicerContext`, which only the handler receives. `guard_handler`
wraps a handler of any kind so that an admission check runs first, inside the call: what it
raises ends the call before the handler's code runs, and `ErrorMappingInterceptor` (placed
before the guarding interceptors) turns it into the peer's status. The admission is a context
manager, so a check can also make something visible to the handler for the call's duration
(the token interceptor's verified claims).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc

from jurisfed.errors import JurisfedError

Behavior = Callable[..., Any]
# Enter before the handler runs (raise to refuse the call), leave when it has finished.
Admission = Callable[[grpc.ServicerContext], AbstractContextManager[object]]


def guard_handler(handler: grpc.RpcMethodHandler, admit: Admission) -> grpc.RpcMethodHandler:
    """`handler` with `admit` entered around its behaviour, for all four kinds of RPC."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, _single),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, _streaming),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, _single),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, _streaming),
    )
    for behavior, make_handler, wrap in kinds:
        if behavior is None:
            continue
        callback_style = getattr(behavior, "experimental_non_blocking", False)
        return make_handler((_non_blocking if callback_style else wrap)(behavior, admit), **serializers)
    return handler  # pragma: no cover - gRPC handlers always have one behaviour


def _single(behavior: Behavior, admit: Admission) -> Behavior:
    """Wrap a handler that returns one response."""

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        with admit(context):
            return behavior(request, context)

    return guarded


def _streaming(behavior: Behavior, admit: Admission) -> Behavior:
    """Wrap a handler that returns an iterator; the admission stays entered while it yields."""

    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with admit(context):
            yield from behavior(request, context)

    return guarded


def _non_blocking(behavior: Behavior, admit: Admission) -> Behavior:
    """Wrap a callback-style handler (gRPC's health Watch). It runs outside the error mapping,
    so refusals abort here; it reports through callbacks, after the admission has been left."""

    def guarded(request: Any, context: grpc.ServicerContext, send: Callable[[Any], None]) -> None:
        try:
            with admit(context):
                pass
        except JurisfedError as error:
            context.abort(error.status, str(error))
        behavior(request, context, send)

    guarded.experimental_non_blocking = True  # type: ignore[attr-defined]
    return guarded


class AdmissionInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """A server interceptor that enters `admit` around every handler whose method it does not
    `exempt`; what `admit` raises ends the call before the handler runs."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or self.exempt(handler_call_details.method):
            return handler
        return guard_handler(handler, self.admit)

    def exempt(self, method: str) -> bool:
        """Whether calls of `method` (``/package.Service/Method``) go through unchecked."""
        return False

    def admit(self, context: grpc.ServicerContext) -> AbstractContextManager[object]:
        raise NotImplementedError
