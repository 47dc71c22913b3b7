"""gRPC plumbing shared by every tier: mTLS servers and channels, health, error mapping."""

from jurisfed.rpc.channel import DEFAULT_DEADLINE_S, open_channel, wait_until_serving
from jurisfed.rpc.interceptors import ErrorMappingInterceptor
from jurisfed.rpc.server import RunningServer, Service, serve

__all__ = [
    "DEFAULT_DEADLINE_S",
    "ErrorMappingInterceptor",
    "RunningServer",
    "Service",
    "open_channel",
    "serve",
    "wait_until_serving",
]
