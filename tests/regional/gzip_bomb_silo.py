"""A registered silo that sends decompression bombs; test_hostile_streams.py runs it as a child.

Usage: gzip_bomb_silo.py ADDRESS TLS_DIR ROUND. The silo registers (uncompressed), prints
"ready", then for each line "header N" or "chunk N" on stdin it calls SubmitUpdate with one
message of N zero bytes in the header's idempotency key or in a chunk's data, gzip-compressed
by gRPC (about N/1000 bytes on the wire), and prints "<status code name>\t<details>".

It runs apart from the test process because a gRPC client needs the whole uncompressed
message in memory to compress it: here those bytes do not count in the server's memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

from jurisfed.auth.pki import TlsFiles
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc, tensors_pb2

CALL_TIMEOUT_S = 60.0


def bomb(round_number: int, where: str, inflated_bytes: int) -> list[regional_pb2.UpdateMessage]:
    header = regional_pb2.UpdateHeader(round=round_number, example_count=1, idempotency_key="bomb")
    if where == "header":
        header.idempotency_key = "\0" * inflated_bytes
        return [regional_pb2.UpdateMessage(header=header)]
    chunk = tensors_pb2.TensorChunk(
        name="dense/kernel",
        dtype=tensors_pb2.DTYPE_FLOAT32,
        shape=[300, 7],
        encoding=tensors_pb2.ENCODING_RAW,
        data=bytes(inflated_bytes),
    )
    return [regional_pb2.UpdateMessage(header=header), regional_pb2.UpdateMessage(chunk=chunk)]


def main(address: str, tls_dir: str, round_number: int) -> None:
    ca_cert, cert, key = TlsFiles.in_directory(Path(tls_dir)).read()
    credentials = grpc.ssl_channel_credentials(ca_cert, key, cert)
    with grpc.secure_channel(address, credentials, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
        stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=100), timeout=CALL_TIMEOUT_S)
        print("ready", flush=True)
        for line in sys.stdin:
            where, size = line.split()
            messages = bomb(round_number, where, int(size))
            try:
                stub.SubmitUpdate(iter(messages), timeout=CALL_TIMEOUT_S, compression=grpc.Compression.Gzip)
            except grpc.RpcError as error:
                details = (error.details() or "").replace("\n", " ")
                print(f"{error.code().name}\t{details}", flush=True)
            else:
                print("OK\taccepted", flush=True)
            del messages


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
