"""Listening addresses as gRPC wants them, and where a local client dials them."""

from __future__ import annotations

import ipaddress


def bindable_host(host: str) -> str:
    """`host` as gRPC wants it in an address: IPv6 literals in brackets."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return f"[{ip}]" if ip.version == 6 else str(ip)


def dialable_host(host: str) -> str:
    """Where a local client reaches a server bound to `host` (the loopback for wildcards)."""
    bracketed = bindable_host(host)
    return {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(bracketed, bracketed)  # noqa: S104


def cannot_listen(address: str) -> str:
    """Why a server could not bind `address`, for a ConfigError."""
    return f"cannot listen on {address}: the port is in use, or the host is not an address of this machine"
