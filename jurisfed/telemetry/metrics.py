"""The Prometheus scrape endpoint every jurisfed process serves, and its meter provider.

`meter_provider` builds the process's `MeterProvider` with the instrument views of
`jurisfed.telemetry.instruments` and a Prometheus reader served over HTTP on `metrics_listen`
(`MetricsEndpoint`); `jurisfed.telemetry.node` adds the OTLP reader when configured. The page shows
jurisfed's metrics, the process's CPU, memory and file descriptors, and a ``target_info``
line with the process's resource (tier, jurisdiction; never its node or host).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from jurisfed.errors import ConfigError
from jurisfed.telemetry.instruments import views
from jurisfed.telemetry.settings import split_host_port


class MetricsEndpoint:
    """A running HTTP server that answers Prometheus scrapes (``GET /metrics``) from `registry`."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, port = split_host_port(listen)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            raise ConfigError(f"cannot serve metrics on {listen}: {error.strerror}") from error
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop answering and release the port; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def meter_provider(
    resource: Resource, *, metrics_listen: str, readers: Sequence[MetricReader] = ()
) -> tuple[MeterProvider, MetricsEndpoint | None]:
    """The process's meter provider, and its scrape endpoint (None when `metrics_listen` is empty).

    `resource` must already be free of identifying attributes: Prometheus shows it in
    ``target_info`` and OTLP sends it with every export. `readers` (the OTLP one, a test's
    in-memory one) are added as they are.
    """
    all_readers = list(readers)
    registry: CollectorRegistry | None = None
    if metrics_listen:
        prometheus = PrometheusMetricReader()
        # The reader also puts itself in prometheus_client's process-wide registry; this
        # endpoint serves a registry of its own, so that it shows this provider's metrics only
        # (tests and the demo run several providers in one process). `_collector` is the
        # reader's collector in the locked 0.48b0.
        registry = CollectorRegistry(auto_describe=False)
        registry.register(prometheus._collector)
        ProcessCollector(registry=registry)
        all_readers.append(prometheus)
    provider = MeterProvider(
        metric_readers=all_readers, resource=resource, views=views(), shutdown_on_exit=False
    )
    if registry is None:
        return provider, None
    try:
        return provider, MetricsEndpoint(registry, metrics_listen)
    except BaseException:
        provider.shutdown()
        raise
