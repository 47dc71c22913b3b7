"""Trace context across every gRPC call: a span on each side, ``traceparent`` in the metadata.

`TracingClientInterceptor` starts a CLIENT span in the caller's current context and sends
its W3C ``traceparent`` with the call; `TracingServerInterceptor` starts the SERVER span as
its child and runs the handler inside it, for all four kinds of RPC (a streaming handler's
span covers the whole stream). Span names follow OpenTelemetry's RPC conventions:
``jurisfed.v1.RegionalAggregator/SubmitUpdate``. Health checks and reflection are not traced.

Server spans record the peer: its address (``network.peer.address``) and, over mTLS, the
jurisdiction, tier and node its certificate names (``jurisfed.peer.*``). The node and the
address identify a silo or a host, so `jurisfed.telemetry.residency` removes them from what
leaves the process.

On the server, place the interceptor after `ErrorMappingInterceptor` (``serve(...,
interceptors=[...])`` does), so that a span records the status the handler's error becomes.
"""

from __future__ import annotations

import collections
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from jurisfed.auth.identity import peer_identity
from jurisfed.errors import JurisfedError
from jurisfed.telemetry.tracing import TRACEPARENT, Attribute, trace_context, traceparent

UNTRACED_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS_CODE = "rpc.grpc.status_code"
PEER_ADDRESS = "network.peer.address"

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _split_method(method: str) -> tuple[str, str]:
    """("jurisfed.v1.Global", "SubmitAggregate") from "/jurisfed.v1.Global/SubmitAggregate"."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _rpc_attributes(method: str) -> dict[str, str]:
    service, name = _split_method(method)
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: name}


def _end(span: trace.Span, code: grpc.StatusCode, error: BaseException | None = None) -> None:
    """Record how the call ended and end the span. The status description is the code's name,
    never the error's message (which reaches the span only as an exception event)."""
    span.set_attribute(RPC_STATUS_CODE, code.value[0])
    if error is not None:
        span.record_exception(error)
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


# ------------------------------------------------------------------------------------ server


class TracingServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Runs every handler inside a SERVER span that continues the caller's trace."""

    def __init__(self, tracer: trace.Tracer, *, untraced: frozenset[str] = UNTRACED_SERVICES) -> None:
        self._tracer = tracer
        self._untraced = untraced

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or _split_method(method)[0] in self._untraced:
            return handler
        behavior: Behavior | None = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        if behavior is None or getattr(behavior, "experimental_non_blocking", False):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        parent = trace_context(str(metadata.get(TRACEPARENT, "")))
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._single(handler.unary_unary, method, parent), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, parent), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._single(handler.stream_unary, method, parent), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method, parent), **serializers
        )

    def _start(self, method: str, parent: Context, context: grpc.ServicerContext) -> trace.Span:
        service, name = _split_method(method)
        return self._tracer.start_span(
            f"{service}/{name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**_rpc_attributes(method), **_peer_attributes(context)},
        )

    def _single(self, behavior: Behavior, method: str, parent: Context) -> Behavior:
        """A handler that returns one response (its request may be a stream)."""

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            span = self._start(method, parent, context)
            try:
                with _current(span):
                    response = behavior(request, context)
            except BaseException as error:
                _end(span, _status_of(error, context), error)
                raise
            _end(span, grpc.StatusCode.OK)
            return response

        return traced

    def _streaming(self, behavior: Behavior, method: str, parent: Context) -> Behavior:
        """A handler that returns a stream of responses; the span ends when the stream does.

        The span is current while the handler runs, step by step, never across a `yield`:
        gRPC may close the stream from another thread when the peer goes away.
        """

        def traced(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            span = self._start(method, parent, context)
            try:
                with _current(span):
                    responses = iter(behavior(request, context))
                while True:
                    with _current(span):
                        response = next(responses, _END)
                    if response is _END:
                        break
                    yield response
            except GeneratorExit:  # the peer cancelled, or the call ended early
                _end(span, grpc.StatusCode.CANCELLED)
                raise
            except BaseException as error:
                _end(span, _status_of(error, context), error)
                raise
            _end(span, grpc.StatusCode.OK)

        return traced


_END = object()


def _current(span: trace.Span) -> Any:
    """Make `span` current; errors are recorded by the caller, which also ends the span."""
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def _status_of(error: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status the peer receives for `error` (see `jurisfed.rpc.interceptors`)."""
    if isinstance(error, JurisfedError):
        return error.status
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.INTERNAL


def _peer_attributes(context: grpc.ServicerContext) -> dict[str, str]:
    """Where the call comes from: its address and, over mTLS, the identity its certificate names."""
    attributes: dict[str, str] = {}
    host = _peer_host(str(context.peer() or ""))
    if host:
        attributes[PEER_ADDRESS] = host
    try:
        identity = peer_identity(context)
    except JurisfedError:  # no client certificate (plaintext), or one that names no identity
        return attributes
    attributes[Attribute.PEER_JURISDICTION.value] = identity.jurisdiction
    attributes[Attribute.PEER_TIER.value] = identity.tier.value
    attributes[Attribute.PEER_NODE.value] = identity.node
    return attributes


def _peer_host(peer: str) -> str:
    """The host of gRPC's peer string: 10.0.0.5 from ipv4:10.0.0.5:443, ::1 from ipv6:[::1]:443
    or ipv6:%5B::1%5D:443; empty for other transports (unix sockets)."""
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return ""
    host, _, _port = rest.rpartition(":")
    return host.strip("[]")


# ------------------------------------------------------------------------------------ client


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]  # grpc is untyped
):
    """The details of a call, with the caller's trace context added to its metadata."""


class TracingClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]  # grpc is untyped
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Wraps every call in a CLIENT span and sends that span's ``traceparent`` with it.

    Use it on a channel: ``grpc.intercept_channel(channel, telemetry.client_interceptor())``.
    The span ends when the call does (for a response stream: when the stream ends).
    """

    def __init__(self, tracer: trace.Tracer, *, untraced: frozenset[str] = UNTRACED_SERVICES) -> None:
        self._tracer = tracer
        self._untraced = untraced

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        method: str = details.method
        service, name = _split_method(method)
        if service in self._untraced:
            return continuation(details, request)
        span = self._tracer.start_span(
            f"{service}/{name}", kind=SpanKind.CLIENT, attributes=_rpc_attributes(method)
        )
        metadata = [(key, value) for key, value in (details.metadata or ()) if key != TRACEPARENT]
        metadata.append((TRACEPARENT, traceparent(span)))
        traced = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        try:
            call = continuation(traced, request)
        except BaseException as error:
            _end(span, grpc.StatusCode.UNKNOWN, error)
            raise
        call.add_done_callback(lambda done: _end(span, done.code() or grpc.StatusCode.UNKNOWN))
        return call
