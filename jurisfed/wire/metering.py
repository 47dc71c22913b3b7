"""Counting what crosses a hop, as the network sees it: serialized messages plus gRPC framing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

# gRPC's length-prefixed message framing: 1 byte compressed flag + 4 bytes length.
GRPC_FRAME_BYTES = 5


class Sized(Protocol):
    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=Sized)


class Meter:
    """Wraps a message stream and counts the bytes of every message that passed through."""

    def __init__(self) -> None:
        self.total_bytes = 0
        self.messages = 0

    def count(self, message: Sized) -> None:
        self.total_bytes += message.ByteSize() + GRPC_FRAME_BYTES
        self.messages += 1

    def wrap(self, messages: Iterator[M]) -> Iterator[M]:
        for message in messages:
            self.count(message)
            yield message
