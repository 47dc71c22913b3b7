"""`jurisfed round start|status|watch|history|abort|rollback`: rounds, for the central ML team."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from jurisfed.auth.pki import TlsFiles, certificate_identity
from jurisfed.auth.tokens import Role, TokenKeyFile
from jurisfed.errors import ConfigError, NotAllowed
from jurisfed.operator.client import OperatorClient
from jurisfed.operator.render import (
    render_history,
    render_open_round,
    render_plan,
    render_regional,
    render_round_line,
    render_status,
)
from jurisfed.round_plan import load_plan
from jurisfed.rounds import RoundState

WATCH_INTERVAL_S = 2.0
Handler = Callable[[argparse.Namespace, OperatorClient], int]


def add_round_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rounds = commands.add_parser(
        "round",
        help="run and follow the federation's rounds (start, status, watch, history, abort, rollback)",
        description="Run and follow rounds at the global aggregator (and read regionals) over mTLS with "
        "an operator certificate (URI SAN jurisfed://<J>/operator/<name>). Exit 1 when a call is "
        "refused, with the reason.",
    )
    actions = rounds.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = _action(
        actions,
        "start",
        "run a round plan (YAML, see deploy/plans/demo.yaml) from the global's next round on",
        _start,
    )
    start.add_argument("--plan", type=Path, required=True, help="the round plan file")
    for name, summary, handler in (
        (
            "status",
            "every round so far: outcome, jurisdictions, examples, bytes, time, who was left out",
            _status,
        ),
        ("watch", "follow rounds live until the federation finishes (Ctrl-C to stop)", _watch),
        (
            "history",
            "every round recorded: participants, gates, metrics, checkpoint hash, left out",
            _history,
        ),
    ):
        action = _action(actions, name, summary, handler)
        if name != "history":
            action.add_argument(
                "--regional",
                action="append",
                default=[],
                metavar="J=HOST:PORT",
                help="also show this jurisdiction's regional (repeatable), e.g. EU=10.0.0.5:50061",
            )
    abort = _action(
        actions, "abort", "abort the open round (nothing merged) and stop the running plan", _abort
    )
    abort.add_argument("--reason", default="", help="why, for the round's record and the audit log")
    rollback = _action(
        actions,
        "rollback",
        "make checkpoint N, byte for byte, the model the next round starts from (no round may be open)",
        _rollback,
    )
    rollback.add_argument("--to", dest="to_version", type=int, required=True, metavar="N", help="checkpoint")
    rollback.add_argument("--reason", default="", help="why, for the record and the audit log")


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, handler: Handler
) -> argparse.ArgumentParser:
    action = actions.add_parser(name, help=summary, description=summary)
    action.add_argument("--global", dest="global_address", required=True, help="host:port of the global")
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
    action.set_defaults(run=lambda args: _connected(args, handler))
    return action


def _connected(args: argparse.Namespace, handler: Handler) -> int:
    regionals: dict[str, str] = {}
    for item in getattr(args, "regional", []):
        jurisdiction, _, address = item.partition("=")
        if not jurisdiction or not address:
            raise SystemExit(f"--regional {item!r}: expected J=HOST:PORT, e.g. EU=127.0.0.1:50061")
        regionals[jurisdiction.upper()] = address
    tls = TlsFiles.in_directory(args.tls_dir)
    try:
        operator = certificate_identity(tls.cert)
        tokens = TokenKeyFile(args.token_key, args.token_key.stem).minter(operator, Role.OPERATOR)
        client = OperatorClient(tls, tokens, args.global_address, regionals)
    except (ConfigError, NotAllowed, OSError) as error:
        raise SystemExit(f"jurisfed round: {error}") from None
    with client:
        try:
            return handler(args, client)
        except grpc.RpcError as error:
            print(f"jurisfed round {args.action}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1


def _start(args: argparse.Namespace, client: OperatorClient) -> int:
    try:
        plan = load_plan(args.plan, environ=os.environ)
    except ConfigError as error:
        print(f"jurisfed round start: {error}", file=sys.stderr)
        return 2
    started = client.start_plan(plan)
    print(f"started {render_plan(started)}")
    return 0


def _status(args: argparse.Namespace, client: OperatorClient) -> int:
    print(render_status(client.federation()))
    for jurisdiction in client.jurisdictions:
        print()
        print(render_regional(client.regional(jurisdiction)))
    return 0


def _history(args: argparse.Namespace, client: OperatorClient) -> int:
    print(render_history(client.history()))
    return 0


def _abort(args: argparse.Namespace, client: OperatorClient) -> int:
    aborted, plan = client.abort(args.reason)
    print(f"aborted round {aborted}" if aborted else "no round was open")
    print(f"stopped {render_plan(plan)}" if plan is not None else "no plan was running")
    return 0


def _rollback(args: argparse.Namespace, client: OperatorClient) -> int:
    done = client.rollback(args.to_version, args.reason)
    source = "none" if done.from_version is None else str(done.from_version)
    print(f"rolled back from checkpoint {source} to checkpoint {done.to_version}: model {done.model_sha256}")
    return 0


def _watch(args: argparse.Namespace, client: OperatorClient) -> int:
    shown: set[int] = set()
    opened: dict[int, float] = {}
    try:
        while True:
            status = client.federation()
            for summary in status.rounds:
                if summary.round not in shown:
                    shown.add(summary.round)
                    print(render_round_line(summary), flush=True)
                    for entry in (e for e in status.left_out if e.round == summary.round):
                        print(
                            f"    {entry.participant} dropped out ({entry.code}): {entry.detail}", flush=True
                        )
            if status.state is RoundState.FINISHED:
                print("federation finished", flush=True)
                return 0
            number = status.current_round
            if status.state is RoundState.OPEN and number not in shown:
                if number not in opened:
                    entries = [r for r in client.history().rounds if r.round == number]
                    opened[number] = entries[0].opened_at if entries else time.time()
                print(render_open_round(status, opened[number]), flush=True)
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        return 0
