"""`jurisfed round status|watch`: what the federation is doing, for the central ML team."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc

from jurisfed.auth.pki import TlsFiles, certificate_identity
from jurisfed.auth.tokens import Role, TokenKeyFile
from jurisfed.errors import ConfigError, NotAllowed
from jurisfed.operator.client import FederationStatus, OperatorClient
from jurisfed.rounds import RoundState, RoundSummary

WATCH_INTERVAL_S = 2.0


def add_round_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rounds = commands.add_parser(
        "round",
        help="see the federation's rounds (status, watch)",
        description="Read round state from the global aggregator (and optionally regionals) over mTLS "
        "with an operator certificate (URI SAN jurisfed://<J>/operator/<name>).",
    )
    actions = rounds.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, summary, handler in (
        ("status", "print every round so far: outcome, jurisdictions, examples, bytes, time", _status),
        ("watch", "follow rounds live until the federation finishes (Ctrl-C to stop)", _watch),
    ):
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument("--global", dest="global_address", required=True, help="host:port of the global")
        action.add_argument(
            "--regional",
            action="append",
            default=[],
            metavar="J=HOST:PORT",
            help="also show this jurisdiction's regional (repeatable), e.g. EU=10.0.0.5:50061",
        )
        action.add_argument(
            "--tls-dir",
            type=Path,
            required=True,
            help="directory with the operator's ca.crt, tls.crt and tls.key",
        )
        action.add_argument(
            "--token-key",
            type=Path,
            required=True,
            metavar="KID.key",
            help="the operator's token key (jurisfed pki token-key); its file name is its key id",
        )
        action.set_defaults(run=handler)


def _client(args: argparse.Namespace) -> OperatorClient:
    regionals: dict[str, str] = {}
    for item in args.regional:
        jurisdiction, _, address = item.partition("=")
        if not jurisdiction or not address:
            raise SystemExit(f"--regional {item!r}: expected J=HOST:PORT, e.g. EU=127.0.0.1:50061")
        regionals[jurisdiction.upper()] = address
    tls = TlsFiles.in_directory(args.tls_dir)
    try:
        operator = certificate_identity(tls.cert)
        tokens = TokenKeyFile(args.token_key, args.token_key.stem).minter(operator, Role.OPERATOR)
        return OperatorClient(tls, tokens, args.global_address, regionals)
    except (ConfigError, NotAllowed, OSError) as error:
        raise SystemExit(f"jurisfed round: {error}") from None


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            status = client.federation()
            print(render_status(status))
            for jurisdiction in client.jurisdictions:
                view = client.regional(jurisdiction)
                print(
                    f"\n{jurisdiction} regional: {len(view.silos)} silos registered ({', '.join(view.silos)})"
                )
                print(render_rounds(view.rounds))
        except grpc.RpcError as error:
            print(f"jurisfed round status: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def _watch(args: argparse.Namespace) -> int:
    shown: set[int] = set()
    with _client(args) as client:
        try:
            while True:
                status = client.federation()
                for summary in status.rounds:
                    if summary.round not in shown:
                        shown.add(summary.round)
                        print(render_round_line(summary), flush=True)
                if status.state is RoundState.FINISHED:
                    print("federation finished", flush=True)
                    return 0
                arrived = sorted(
                    {c.jurisdiction for c in status.contributions if c.round == status.current_round}
                )
                if status.current_round and status.current_round not in shown:
                    print(
                        f"  round {status.current_round} open: aggregates from "
                        f"{', '.join(arrived) or 'none yet'} of {', '.join(status.jurisdictions)}",
                        flush=True,
                    )
                time.sleep(WATCH_INTERVAL_S)
        except grpc.RpcError as error:
            print(f"jurisfed round watch: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


def render_status(status: FederationStatus) -> str:
    head = (
        f"federation: {status.state.value}, round {status.current_round}, "
        f"jurisdictions {', '.join(status.jurisdictions) or 'none registered'}"
    )
    lines = [head, render_rounds(status.rounds)]
    lines += [
        f"  round {r.round}: {r.jurisdiction} declined by its policy, rule {r.rule_id}: {r.reason}"
        for r in status.refusals
    ]
    return "\n".join(lines)


def render_rounds(rounds: tuple[RoundSummary, ...]) -> str:
    if not rounds:
        return "  no round has closed yet"
    return "\n".join(render_round_line(summary) for summary in rounds)


def render_round_line(summary: RoundSummary) -> str:
    refused = f", {len(summary.rejections)} refused" if summary.rejections else ""
    model = f", model {summary.model_sha256[:12]}" if summary.model_sha256 else ""
    return (
        f"  round {summary.round}: {summary.outcome}; {', '.join(summary.participants) or 'nobody'} "
        f"({summary.example_total} examples, {summary.bytes_received} bytes in, "
        f"{summary.wall_time_s:.1f} s{refused}{model})"
    )
