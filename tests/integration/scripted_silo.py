"""A silo as an OS process that the round tests can SIGKILL or SIGSTOP at a known point.

Usage: scripted_silo.py ADDRESS TLS_DIR TOKEN_KEY KID JURISDICTION NODE PROGRESS [options]

It registers with the regional at ADDRESS and takes part in every round like a real silo (wait
for the task, fetch the model, send a signed constant delta), without TensorFlow, and appends a
line to PROGRESS at each step: "registered", "fetched N", "half-sent N" and "accepted N" or
"refused N CODE". Options:
  --value V        the delta's every value (default 0.1)
  --examples N     examples declared and claimed (default 50)
  --delay S        seconds between fetching the model and sending the update (default 0)
  --half-round N   in round N, send the header and half the tensors, then hang (to be killed)
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.auth.tokens import Role, TokenKeyFile
from jurisfed.modeling.mlp import Mlp
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc, rounds_pb2, tensors_pb2

CALL_S = 10.0
POLL_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("address", "tls_dir", "token_key", "kid", "jurisdiction", "node", "progress"):
        parser.add_argument(name)
    parser.add_argument("--value", type=float, default=0.1)
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--half-round", type=int, default=0)
    args = parser.parse_args()
    progress = Path(args.progress)

    def report(line: str) -> None:
        with progress.open("a") as handle:
            handle.write(line + "\n")

    identity = Identity(args.jurisdiction, Tier.SILO, args.node)
    tls = TlsFiles.in_directory(Path(args.tls_dir))
    tokens = TokenKeyFile(Path(args.token_key), args.kid).minter(identity, Role.SILO)
    channel, _ = open_authenticated_channel(args.address, tls, tokens, expect=Tier.REGIONAL)
    stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
    signer = ContentSigner.from_tls_files(tls)
    stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=args.examples), timeout=CALL_S)
    report("registered")
    spec = Mlp.parse("mlp-4-8-3").spec()
    delta = {t.name: np.full(t.shape, args.value, dtype=np.float32) for t in spec.tensors}
    chunks = list(encode_tensors(spec, delta))
    last = 0
    while True:
        request = rounds_pb2.WaitForRoundRequest(after_round=last, max_wait_s=POLL_S)
        task = serde.round_announcement_from_proto(stub.WaitForTask(request, timeout=POLL_S + 5))
        if task.state.value == "finished":
            report("finished")
            return
        if task.state.value != "open":
            continue
        last = task.round
        fetched = stub.FetchModel(rounds_pb2.FetchModelRequest(round=task.round), timeout=CALL_S)
        receive_model(fetched, spec, task.base_model_sha256)
        report(f"fetched {task.round}")
        time.sleep(args.delay)
        header = regional_pb2.UpdateHeader(
            round=task.round,
            example_count=args.examples,
            idempotency_key=f"{args.node}-{task.round}",
            train_loss=0.5,
            content_signature=signer.sign(task.round, digest_chunks(chunks)),
        )
        if task.round == args.half_round:
            _send_half(stub, header, chunks, lambda line=f"half-sent {task.round}": report(line))
        try:
            stub.SubmitUpdate(_messages(header, chunks), timeout=CALL_S)
        except grpc.RpcError as error:
            report(f"refused {task.round} {error.code().name}")
        else:
            report(f"accepted {task.round}")


def _messages(
    header: regional_pb2.UpdateHeader, chunks: list[tensors_pb2.TensorChunk]
) -> Iterator[regional_pb2.UpdateMessage]:
    yield regional_pb2.UpdateMessage(header=header)
    for chunk in chunks:
        yield regional_pb2.UpdateMessage(chunk=chunk)


def _send_half(
    stub: regional_pb2_grpc.RegionalAggregatorStub,
    header: regional_pb2.UpdateHeader,
    chunks: list[tensors_pb2.TensorChunk],
    sent: Callable[[], None],
) -> None:
    """Stream the header and half the chunks, then hang with the call open until killed."""

    def messages() -> Iterator[regional_pb2.UpdateMessage]:
        yield regional_pb2.UpdateMessage(header=header)
        for chunk in chunks[: len(chunks) // 2]:
            yield regional_pb2.UpdateMessage(chunk=chunk)
        sent()  # gRPC asks for the next message only once these are on their way
        threading.Event().wait()

    stub.SubmitUpdate(messages(), timeout=3600)


if __name__ == "__main__":
    main()
