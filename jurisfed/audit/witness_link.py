"""Two aggregators witnessing each other's audit logs over gRPC (the `AuditWitness` service).

The global hosts the service; each regional calls it after every round and when it stops:
it asks how much of its log the global holds, sends its newest signed checkpoint with the
consistency proof from there, and takes the global's own in return. Both sides keep what
they witnessed in a `WitnessBook` (an append-only file), so `jurisfed audit verify LOG
--witness FILE` can later show a log that was truncated or rewritten after it was witnessed.

Peers are pinned in the configuration as ``IDENTITY=PUBLIC_KEY_FILE`` (the peer's audit
checkpoint key); a checkpoint signed by any other key is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed.audit.checkpoint import SignedCheckpoint
from jurisfed.audit.keys import load_public_keys
from jurisfed.audit.log import AuditLog
from jurisfed.audit.witness import WitnessBook
from jurisfed.auth.identity import Identity, peer_identity
from jurisfed.auth.tokens import Role
from jurisfed.errors import ConfigError, NotAllowed, Unauthenticated
from jurisfed.rpc.channel import DEFAULT_DEADLINE_S
from jurisfed.rpc.server import Service
from jurisfed.rpc.token_interceptor import MethodRoles
from jurisfed.wire.v1 import witness_pb2, witness_pb2_grpc

log = logging.getLogger("jurisfed.audit.witness")

WITNESS_FILE = "witness.jsonl"
SERVICE = witness_pb2.DESCRIPTOR.services_by_name["AuditWitness"]
# Regionals exchange checkpoints with the global; nobody else calls the service.
METHOD_ROLES = MethodRoles.for_service(
    SERVICE.full_name, {"WitnessedSize": [Role.REGIONAL], "Exchange": [Role.REGIONAL]}
)


def pinned_peers(entries: Iterable[str]) -> dict[Identity, Ed25519PublicKey]:
    """``IDENTITY=PUBLIC_KEY_FILE`` entries as a map; ConfigError naming a malformed one."""
    peers: dict[Identity, Ed25519PublicKey] = {}
    for entry in entries:
        uri, separator, path = entry.partition("=")
        if not separator or not path:
            raise ConfigError(f"witness peer {entry!r} must read IDENTITY=PUBLIC_KEY_FILE")
        try:
            identity = Identity.parse(uri.strip())
        except Unauthenticated as error:
            raise ConfigError(f"witness peer {entry!r}: {error}") from None
        keys = load_public_keys(Path(path.strip()))
        if len(keys) != 1:
            raise ConfigError(f"witness peer {identity}: {path} must hold exactly one public key")
        peers[identity] = keys[0]
    return peers


class WitnessServicer(witness_pb2_grpc.AuditWitnessServicer):
    """The global's side: witness a regional's log and show it this node's."""

    def __init__(self, log_: AuditLog, book: WitnessBook) -> None:
        self._log = log_
        self._book = book

    def WitnessedSize(
        self, request: witness_pb2.WitnessedSizeRequest, context: grpc.ServicerContext
    ) -> witness_pb2.WitnessedSizeResponse:
        return witness_pb2.WitnessedSizeResponse(size=self._book.witnessed_size(peer_identity(context)))

    def Exchange(
        self, request: witness_pb2.WitnessUpdate, context: grpc.ServicerContext
    ) -> witness_pb2.WitnessUpdate:
        peer = peer_identity(context)
        presented = _checkpoint(request.checkpoint)
        if presented.origin != peer:
            raise NotAllowed(
                f"{peer} presented the checkpoint of {presented.origin}; a node witnesses only itself"
            )
        self._book.observe(presented, request.old_size, tuple(request.proof))
        return _update(self._log, request.witnessed_size, witnessed_size=self._book.witnessed_size(peer))


def witness_service(log_: AuditLog, book: WitnessBook) -> Service:
    servicer = WitnessServicer(log_, book)
    return Service(
        name=SERVICE.full_name,
        register=lambda server: witness_pb2_grpc.add_AuditWitnessServicer_to_server(servicer, server),
    )


def open_book(state_dir: Path, witness: Identity, peers: Iterable[str], audit: AuditLog) -> WitnessBook:
    """This node's witness file in `state_dir`, for the peers pinned as IDENTITY=KEY_FILE."""
    return WitnessBook(state_dir / WITNESS_FILE, witness, pinned_peers(peers), sink=audit)


def exchange(channel: grpc.Channel, log_: AuditLog, book: WitnessBook, peer: Identity) -> SignedCheckpoint:
    """The regional's side: hand `peer` this log's newest checkpoint and witness `peer`'s.

    Returns the checkpoint of `peer` now held. Raises LogForked when `peer`'s log contradicts
    what was witnessed before (the conflict is recorded), grpc.RpcError when `peer` refuses.
    """
    stub = witness_pb2_grpc.AuditWitnessStub(channel)
    held = stub.WitnessedSize(witness_pb2.WitnessedSizeRequest(), timeout=DEFAULT_DEADLINE_S).size
    answer = stub.Exchange(
        _update(log_, held, witnessed_size=book.witnessed_size(peer)), timeout=DEFAULT_DEADLINE_S
    )
    presented = _checkpoint(answer.checkpoint)
    if presented.origin != peer:
        raise NotAllowed(f"{peer} answered with the checkpoint of {presented.origin}")
    return book.observe(presented, answer.old_size, tuple(answer.proof))


def _update(log_: AuditLog, from_size: int, *, witnessed_size: int) -> witness_pb2.WitnessUpdate:
    update = log_.witness_update(from_size)
    return witness_pb2.WitnessUpdate(
        checkpoint=update.checkpoint.to_line(),
        old_size=update.old_size,
        proof=list(update.proof),
        witnessed_size=witnessed_size,
    )


def _checkpoint(line: bytes) -> SignedCheckpoint:
    """The peer's checkpoint; MalformedRecord (INVALID_ARGUMENT) unless canonical and well formed."""
    return SignedCheckpoint.from_line(line)
