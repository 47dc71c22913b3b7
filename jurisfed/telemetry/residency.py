"""Residency applies to telemetry: what a process exports carries no silo identities or host names.

A residency policy's ``strip_metadata`` names kinds of identifying detail (`MetadataField`);
`AttributeFilter` turns each kind into the span attributes that carry it and removes them
from a span, its events, its links and its resource. `ResidencySpanExporter` applies the
filter to every span on its way to an exporter that sends spans away (OTLP, the spans file).

What is removed, by field (a key ending in "." covers every key under it):
  silo_ids                 jurisfed.silo.id, jurisfed.peer.node, jurisfed.node, service.instance.id,
                           enduser.*, and any value naming a ``jurisfed://…/silo/…`` identity
  host_names               host.*, k8s.*, container.*, service.instance.id, jurisfed.node,
                           jurisfed.peer.node, net.host.name, net.peer.name, server.address,
                           client.address, and any value naming a ``jurisfed://`` identity
  ip_addresses             host.ip, net.host.ip, net.peer.ip, net.sock.*, network.peer.*,
                           network.local.*, client.*, server.*, and any value holding an IP address
  per_silo_example_counts  jurisfed.silo.example_count
  per_silo_metrics         jurisfed.silo.* (everything recorded about one silo)
Free text can name anything: when silo ids, host names or IP addresses are stripped, exception
messages and stack traces are removed and a span's status keeps its code but not its description.
Trace and span ids, span names and the remaining attributes pass unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes, AttributeValue

from jurisfed.auth.identity import Tier
from jurisfed.policy.model import Artifact, MetadataField, Policy

ATTRIBUTE_KEYS: Final[Mapping[MetadataField, tuple[str, ...]]] = {
    MetadataField.SILO_IDS: (
        "jurisfed.silo.id",
        "jurisfed.peer.node",
        "jurisfed.node",
        "service.instance.id",
        "enduser.",
    ),
    MetadataField.HOST_NAMES: (
        "host.",
        "k8s.",
        "container.",
        "service.instance.id",
        "jurisfed.node",
        "jurisfed.peer.node",
        "net.host.name",
        "net.peer.name",
        "server.address",
        "client.address",
    ),
    MetadataField.IP_ADDRESSES: (
        "host.ip",
        "net.host.ip",
        "net.peer.ip",
        "net.sock.",
        "network.peer.",
        "network.local.",
        "client.",
        "server.",
    ),
    MetadataField.PER_SILO_EXAMPLE_COUNTS: ("jurisfed.silo.example_count",),
    MetadataField.PER_SILO_METRICS: ("jurisfed.silo.",),
}

FREE_TEXT_KEYS: Final = ("exception.message", "exception.stacktrace")
_FREE_TEXT_FIELDS = frozenset({MetadataField.SILO_IDS, MetadataField.HOST_NAMES, MetadataField.IP_ADDRESSES})

_SILO_URI = re.compile(r"jurisfed://[^/\s]*/silo/")
_ANY_URI = re.compile(r"jurisfed://")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6_CANDIDATE = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f:]*:[0-9A-Fa-f]*")  # two colons or more


def holds_ip_address(text: str) -> bool:
    """Whether `text` contains an IPv4 or IPv6 address (also inside "ipv4:10.0.0.5:443", "[::1]")."""
    if _IPV4.search(text):
        return True
    for candidate in _IPV6_CANDIDATE.findall(text):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return True
    return False


# Values that give a field away whatever their key.
_VALUE_TESTS: Final[Mapping[MetadataField, Callable[[str], bool]]] = {
    MetadataField.SILO_IDS: lambda text: bool(_SILO_URI.search(text)),
    MetadataField.HOST_NAMES: lambda text: bool(_ANY_URI.search(text)),
    MetadataField.IP_ADDRESSES: holds_ip_address,
}


class AttributeFilter:
    """Removes the attributes that carry the metadata fields in `strip` (none: everything passes)."""

    def __init__(self, strip: frozenset[MetadataField]) -> None:
        self.strip = strip
        keys = {key for field in strip for key in ATTRIBUTE_KEYS[field]}
        if strip & _FREE_TEXT_FIELDS:
            keys.update(FREE_TEXT_KEYS)
        self._exact = frozenset(key for key in keys if not key.endswith("."))
        self._prefixes = tuple(sorted(key for key in keys if key.endswith(".")))
        self._value_tests = tuple(test for field, test in _VALUE_TESTS.items() if field in strip)
        self.strips_free_text = bool(strip & _FREE_TEXT_FIELDS)

    def allows(self, key: str, value: AttributeValue) -> bool:
        """Whether the attribute `key` = `value` may leave."""
        if key in self._exact or key.startswith(self._prefixes):
            return False
        if isinstance(value, str):
            texts: Sequence[str] = (value,)
        elif isinstance(value, Sequence):
            texts = [item for item in value if isinstance(item, str)]
        else:
            return True
        return not any(test(text) for test in self._value_tests for text in texts)

    def attributes(self, attributes: Attributes) -> dict[str, AttributeValue]:
        return {key: value for key, value in (attributes or {}).items() if self.allows(key, value)}

    def resource(self, resource: Resource) -> Resource:
        return Resource(self.attributes(resource.attributes), resource.schema_url)

    def span(self, span: ReadableSpan) -> ReadableSpan:
        """A copy of `span` without what may not leave; ids, name, kind and times unchanged."""
        if not self.strip:
            return span
        status = span.status
        if self.strips_free_text and status.description:
            status = Status(status.status_code)
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=self.resource(span.resource),
            attributes=self.attributes(span.attributes),
            events=tuple(Event(e.name, self.attributes(e.attributes), e.timestamp) for e in span.events),
            links=tuple(Link(link.context, self.attributes(link.attributes)) for link in span.links),
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )


class ResidencySpanExporter(SpanExporter):
    """Passes spans to `inner` once `strip`'s attributes are removed from them."""

    def __init__(self, inner: SpanExporter, strip: frozenset[MetadataField]) -> None:
        self._inner = inner
        self._filter = AttributeFilter(strip)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([self._filter.span(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def required_by_policy(policy: Policy, tier: Tier) -> frozenset[MetadataField]:
    """What `policy` says to strip from telemetry that its `tier` sends out of its jurisdiction.

    The union of ``strip_metadata`` over every telemetry rule from this tier of the policy's
    jurisdiction to anywhere else; a tier starts its telemetry with these stripped, whatever
    its configuration says.
    """
    own = policy.jurisdiction
    return frozenset(
        field
        for rule in policy.rules_for(Artifact.TELEMETRY)
        if tier in rule.source.tiers
        and own in rule.source.jurisdictions
        and rule.destination.jurisdictions != {own}
        for field in rule.conditions.strip_metadata
    )
