"""`python -m jurisfed.healthcheck`: ask a jurisfed server, over mutual TLS, whether it is serving.

The probe behind the container image's HEALTHCHECK, and an operator's check (`kubectl exec ...
jurisfed-node healthcheck`). Every jurisfed port requires a client certificate, so the probe
runs beside the server with the node's own certificate and calls the standard
``grpc.health.v1.Health/Check``. (Kubernetes' built-in gRPC probe, which cannot present one,
asks the plaintext health-only port instead: `health_listen`, `jurisfed.rpc.health_listener`.)

Exit status: 0 SERVING (with ``--live``: any answer at all); 1 the server answered, but not
SERVING (starting, draining, or the service is unknown); 2 the probe cannot run (no address,
unreadable TLS files, bad arguments); 3 no answer (refused, TLS handshake failed, deadline).
With ``--wait SECONDS`` it asks again every second until the check passes or time runs out,
which is how a runbook or a script waits for a node it has just started.

Every option has an environment default (``JURISFED_HEALTHCHECK_ADDRESS``,
``JURISFED_HEALTHCHECK_TLS_DIR``) so that an image can name the probe once and each container
say where its server listens.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jurisfed.auth.pki import TlsFiles
from jurisfed.errors import ConfigError

ADDRESS_VARIABLE = "JURISFED_HEALTHCHECK_ADDRESS"
TLS_DIR_VARIABLE = "JURISFED_HEALTHCHECK_TLS_DIR"
DEFAULT_TIMEOUT_S = 3.0
POLL_INTERVAL_S = 1.0


class Verdict(enum.IntEnum):
    """What the probe found; the value is its exit status."""

    SERVING = 0
    NOT_SERVING = 1
    CANNOT_RUN = 2
    NO_ANSWER = 3


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    detail: str


def check(
    address: str,
    tls: TlsFiles,
    *,
    service: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    server_name: str | None = None,
) -> Answer:
    """One Check call to `address` ("host:port") presenting `tls`; `service` "" is the whole server.

    `server_name` overrides the name the server's certificate must carry (by default the host of
    `address`). Raises `ConfigError` when the TLS files cannot be read.
    """
    ca_cert, cert, key = tls.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_cert, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return Answer(Verdict.NOT_SERVING, f"{address}: service {service!r} is unknown")
            return Answer(
                Verdict.NO_ANSWER, f"no answer from {address}: {error.code().name}: {error.details()}"
            )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    return Answer(Verdict.SERVING if serving else Verdict.NOT_SERVING, f"{address}: {status}")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m jurisfed.healthcheck",
        description="Call grpc.health.v1.Health/Check on a jurisfed server over mutual TLS, with this "
        "node's certificate. Exit status: 0 SERVING (with --live: any answer), 1 answered but not "
        "SERVING, 2 cannot run, 3 no answer.",
    )
    parser.add_argument(
        "--address",
        default=environ.get(ADDRESS_VARIABLE),
        help=f"host:port of the server (default ${ADDRESS_VARIABLE})",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=environ.get(TLS_DIR_VARIABLE),
        help=f"directory with ca.crt, tls.crt and tls.key (default ${TLS_DIR_VARIABLE})",
    )
    parser.add_argument("--service", default="", help="service to ask about (default: the whole server)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help=f"seconds (default {DEFAULT_TIMEOUT_S:g})"
    )
    parser.add_argument("--server-name", help="name the server's certificate must carry (default: the host)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="ask again every second until the check passes or SECONDS have gone by (default: ask once)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="succeed on any answer, SERVING or not: the process is alive while it starts or drains "
        "(a liveness probe; readiness leaves this off)",
    )
    args = parser.parse_args(argv)
    if not args.address or args.tls_dir is None:
        print(
            f"healthcheck: give --address and --tls-dir (or set ${ADDRESS_VARIABLE} and ${TLS_DIR_VARIABLE})",
            file=sys.stderr,
        )
        return Verdict.CANNOT_RUN
    give_up = time.monotonic() + max(args.wait, 0.0)
    while True:
        try:
            answer = check(
                args.address,
                TlsFiles.in_directory(Path(args.tls_dir)),
                service=args.service,
                timeout_s=args.timeout,
                server_name=args.server_name,
            )
        except ConfigError as error:
            print(f"healthcheck: {error}", file=sys.stderr)
            return Verdict.CANNOT_RUN
        print(answer.detail, flush=True)
        verdict = answer.verdict
        if args.live and verdict is Verdict.NOT_SERVING:
            verdict = Verdict.SERVING
        if verdict is Verdict.SERVING or time.monotonic() + POLL_INTERVAL_S > give_up:
            return verdict
        time.sleep(POLL_INTERVAL_S)


if __name__ == "__main__":
    raise SystemExit(main())
