"""`jurisfed policy ...`: the commands legal reviewers and operators use on policy files.

`add_policy_commands(subparsers)` adds the `policy` command to the `jurisfed` parser; each
subcommand sets `run`, which returns the exit status: 0 all is well, 1 a problem was found
(invalid or unapproved policy, refused flow, topology finding), 2 a usage error.
Building the parser imports nothing heavy; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from jurisfed.policy.errors import PolicyError

__all__ = ["add_policy_commands"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_KEYS_HELP = "trusted approver public key (PEM file), or a directory of them (*.pem); repeatable"


def add_policy_commands(subparsers: Subparsers) -> None:
    """Add `policy check|explain|diff|sign|verify|simulate|keygen` to a `jurisfed` parser."""
    policy = subparsers.add_parser(
        "policy",
        help="check, explain, compare, sign, verify and dry-run residency policy files",
        description="Residency policy files: one YAML file per jurisdiction says which model information "
        "may flow where (default deny). These commands validate them, render them in plain language for "
        "review, list what changed between versions, sign and verify approvals, and dry-run flows. "
        "See docs/policy-reference.md.",
    )
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    _add_check(commands)
    _add_explain(commands)
    _add_diff(commands)
    _add_sign(commands)
    _add_verify(commands)
    _add_simulate(commands)
    _add_keygen(commands)


Command = Callable[[argparse.Namespace], int]


def _guarded(run: Command) -> Command:
    """Wrap a command so that a PolicyError prints one clear message and exits 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except PolicyError as error:
            print(f"jurisfed policy {args.policy_command}: {error}", file=sys.stderr)
            return 1

    return wrapped


# --- check ------------------------------------------------------------------------------------


def _add_check(commands: Subparsers) -> None:
    check = commands.add_parser(
        "check",
        help="validate policy files; with --topology, find missing flows, dead and conflicting rules",
        description="Validate each policy file against the schema and for consistency (unknown groups, "
        "locations, duplicate ids). With --keys, also verify its approvals. With --topology FILE, report "
        "flows the federation needs that no rule allows, rules that can never apply, and rules that "
        "conflict. Exit status 1 when a file is invalid or unapproved, a needed flow is missing or rules "
        "conflict; a rule that is dead only in this topology is reported but is no failure (it may "
        "serve another hosting, e.g. after the global aggregator moves).",
    )
    check.add_argument("policies", nargs="+", type=Path, metavar="POLICY", help="policy YAML file(s)")
    check.add_argument("--keys", action="append", type=Path, default=[], metavar="PATH", help=_KEYS_HELP)
    check.add_argument(
        "--topology", type=Path, metavar="FILE", help="topology YAML (jurisdictions, where aggregators run)"
    )
    check.set_defaults(run=_guarded(_run_check))


def _run_check(args: argparse.Namespace) -> int:
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415
    from jurisfed.policy.signing import load_trusted_keys, verify_approvals  # noqa: PLC0415
    from jurisfed.policy.topology import FindingKind, analyse, read_topology  # noqa: PLC0415

    trusted = load_trusted_keys(args.keys) if args.keys else None
    topology = read_topology(args.topology) if args.topology else None
    failed = False
    for path in args.policies:
        try:
            policy = read_policy(path)
            print(f"{path}: valid: {policy.label}, {len(policy.rules)} rule(s), {policy.sha256}")
            if trusted is not None:
                approvals = verify_approvals(policy, trusted, source=str(path))
                print(f"  approved by {', '.join(a.approver for a in approvals)} (signatures verified)")
        except PolicyError as error:
            print(f"{path}: {error}")
            failed = True
            continue
        if topology is not None:
            findings = analyse(policy, topology)
            for finding in findings:
                print(f"  {finding.kind.value}: {finding.message}")
            if not findings:
                print(
                    f"  topology {args.topology}: every needed flow is allowed; no dead or conflicting rule"
                )
            failed = failed or any(f.kind is not FindingKind.DEAD for f in findings)
    return 1 if failed else 0


# --- explain ----------------------------------------------------------------------------------


def _add_explain(commands: Subparsers) -> None:
    explain = commands.add_parser(
        "explain",
        help="render a policy in plain language (Markdown, or a self-contained HTML page)",
        description="Render POLICY as plain language: each rule as a sentence with its legal basis and "
        "conditions, what never leaves, retention, names, approvals. Prints Markdown unless --html or "
        "--markdown name a file. The HTML page is self-contained (no scripts, nothing loaded).",
    )
    explain.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file")
    explain.add_argument("--html", type=Path, metavar="OUT", help="write a self-contained HTML page here")
    explain.add_argument("--markdown", type=Path, metavar="OUT", help="write Markdown here")
    explain.add_argument(
        "--keys",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help=f"{_KEYS_HELP}: show signature status",
    )
    explain.set_defaults(run=_guarded(_run_explain))


def _run_explain(args: argparse.Namespace) -> int:
    from jurisfed.policy.explain import explain_html, explain_markdown  # noqa: PLC0415
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415
    from jurisfed.policy.signing import check_approvals, load_trusted_keys  # noqa: PLC0415

    policy = read_policy(args.policy)
    checks = check_approvals(policy, load_trusted_keys(args.keys)) if args.keys else None
    if args.html:
        args.html.write_text(explain_html(policy, checks), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.markdown:
        args.markdown.write_text(explain_markdown(policy, checks), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if not args.html and not args.markdown:
        print(explain_markdown(policy, checks), end="")
    return 0


# --- diff -------------------------------------------------------------------------------------


def _add_diff(commands: Subparsers) -> None:
    diff = commands.add_parser(
        "diff",
        help="list what changed between two versions of a policy, one sentence per change",
        description="Compare the meaning of OLD and NEW (layout and comments do not count) and list each "
        "change as a sentence, marked [loosens] when it lets more flow and [tightens] when less.",
    )
    diff.add_argument("old", type=Path, metavar="OLD", help="the earlier version")
    diff.add_argument("new", type=Path, metavar="NEW", help="the later version")
    diff.set_defaults(run=_guarded(_run_diff))


def _run_diff(args: argparse.Namespace) -> int:
    from jurisfed.policy.diff import diff_policies, render_changes  # noqa: PLC0415
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415

    old, new = read_policy(args.old), read_policy(args.new)
    print(render_changes(old, new, diff_policies(old, new)), end="")
    return 0


# --- sign, verify, keygen ---------------------------------------------------------------------


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise PolicyError(f"--passphrase-env names ${variable}, which is not set")
    return value.encode("utf-8")


def _add_sign(commands: Subparsers) -> None:
    sign = commands.add_parser(
        "sign",
        help="approve a policy: add your signature to its approvals block",
        description="Sign the canonical form of POLICY with your Ed25519 private key and write the "
        "approval (your name, the time, your key id and the signature) into the file's approvals: block; "
        "nothing else in the file changes. An earlier approval by the same key is replaced; approvals "
        "that no longer match the text are dropped (they approved another version).",
    )
    sign.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file (rewritten in place)")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY.pem", help="your Ed25519 private key")
    sign.add_argument(
        "--approver", required=True, metavar="NAME", help='your name and role, e.g. "A. Jones, DPO"'
    )
    sign.add_argument(
        "--passphrase-env", metavar="VAR", help="environment variable holding the key's passphrase"
    )
    sign.set_defaults(run=_guarded(_run_sign))


def _run_sign(args: argparse.Namespace) -> int:
    from jurisfed.policy.signing import approve_file, load_private_key  # noqa: PLC0415

    private = load_private_key(args.key, _passphrase(args.passphrase_env))
    signed = approve_file(args.policy, private, args.approver)
    for approval in signed.dropped:
        print(f"dropped the approval by {approval.approver}: it approved a different version")
    a = signed.approval
    print(f"signed {args.policy} as {a.approver} (key {a.key_id}) at {a.approved_at}")
    return 0


def _add_verify(commands: Subparsers) -> None:
    verify = commands.add_parser(
        "verify",
        help="check that policies are approved by trusted keys and unchanged since",
        description="For each POLICY, check every approval against the trusted keys: valid (trusted key, "
        "this exact text), untrusted (sound signature, unknown key) or invalid (the text changed after "
        "approval). Exit status 0 only when every policy would be accepted by a tier trusting these keys.",
    )
    verify.add_argument("policies", nargs="+", type=Path, metavar="POLICY", help="policy YAML file(s)")
    verify.add_argument("--keys", action="append", type=Path, required=True, metavar="PATH", help=_KEYS_HELP)
    verify.set_defaults(run=_guarded(_run_verify))


def _run_verify(args: argparse.Namespace) -> int:
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415
    from jurisfed.policy.signing import check_approvals, load_trusted_keys, verify_approvals  # noqa: PLC0415

    trusted = load_trusted_keys(args.keys)
    failed = False
    for path in args.policies:
        try:
            policy = read_policy(path)
        except PolicyError as error:
            print(f"{path}: {error}")
            failed = True
            continue
        print(f"{path}: {policy.label} {policy.sha256}")
        for check in check_approvals(policy, trusted):
            a = check.approval
            print(f"  {check.status.value:<9} {a.approver} ({a.key_id}) at {a.approved_at}: {check.detail}")
        try:
            verify_approvals(policy, trusted, source=str(path))
            print("  APPROVED: a tier trusting these keys will run under this policy")
        except PolicyError as error:
            print(f"  REFUSED: {error}")
            failed = True
    return 1 if failed else 0


def _add_keygen(commands: Subparsers) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="make an approver's Ed25519 key pair",
        description="Write a new Ed25519 key pair: the private key (mode 0600; keep it to yourself) and the "
        "public key, which operators add to the trusted keys of their tiers. Existing files are never "
        "overwritten.",
    )
    keygen.add_argument(
        "--private-key", type=Path, required=True, metavar="PATH", help="where the private key goes"
    )
    keygen.add_argument(
        "--public-key", type=Path, required=True, metavar="PATH", help="where the public key goes"
    )
    keygen.add_argument(
        "--passphrase-env", metavar="VAR", help="encrypt the private key with this variable's value"
    )
    keygen.set_defaults(run=_guarded(_run_keygen))


def _run_keygen(args: argparse.Namespace) -> int:
    from jurisfed.policy.signing import generate_key_pair  # noqa: PLC0415

    key = generate_key_pair(args.private_key, args.public_key, _passphrase(args.passphrase_env))
    print(f"key {key}: private key {args.private_key} (mode 0600), public key {args.public_key}")
    return 0


# --- simulate ---------------------------------------------------------------------------------


def _add_simulate(commands: Subparsers) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="dry-run flows against policies: which rule decides, what would be refused",
        description="Decide flows against the given policies without running anything. Give the flows in "
        "a YAML file (--flows; the format is in docs/policy-reference.md) or describe one flow with the "
        "options below. A flow needs the approval of the policy of each jurisdiction it starts or ends "
        "in. Exit status 1 when any flow would be refused.",
    )
    simulate.add_argument("policies", nargs="+", type=Path, metavar="POLICY", help="policy YAML file(s)")
    simulate.add_argument(
        "--flows", type=Path, metavar="FILE", help="YAML file of flows (e.g. a recorded round)"
    )
    simulate.add_argument("--artifact", help="what flows: model_update, aggregate, model_checkpoint, ...")
    simulate.add_argument("--from", dest="source", metavar="ENDPOINT", help="sender, e.g. EU/regional")
    simulate.add_argument(
        "--to", dest="destination", metavar="ENDPOINT", help="receiver, e.g. GLOBAL/global@ch-zurich"
    )
    simulate.add_argument("--cohort-silos", type=int, help="silos behind an aggregate")
    simulate.add_argument("--epsilon", type=float, help="DP epsilon spent over --period-days (omit: no DP)")
    simulate.add_argument("--delta", type=float, default=0.0, help="DP delta spent (default 0)")
    simulate.add_argument("--period-days", type=int, help="days the DP spend was accounted over")
    simulate.add_argument(
        "--compressed", action=argparse.BooleanOptionalAction, default=None, help="compressed?"
    )
    simulate.add_argument("--layers", help="comma-separated tensor names it carries")
    simulate.add_argument(
        "--metadata", help="comma-separated identifying fields it still carries ('' for none)"
    )
    simulate.add_argument(
        "--data-class", action="append", default=[], help="data class it derives from; repeatable"
    )
    simulate.set_defaults(run=_guarded(_run_simulate))


def _run_simulate(args: argparse.Namespace) -> int:
    from jurisfed.policy.flows import NamedFlow, flow_from_record  # noqa: PLC0415
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415
    from jurisfed.policy.simulate import read_flows, render_outcomes, simulate  # noqa: PLC0415

    policies = [read_policy(path) for path in args.policies]
    flows: list[NamedFlow] = read_flows(args.flows) if args.flows else []
    if args.artifact or args.source or args.destination:
        if not (args.artifact and args.source and args.destination):
            raise PolicyError("describing a flow needs --artifact, --from and --to")
        record: dict[str, object] = {"artifact": args.artifact, "from": args.source, "to": args.destination}
        if args.cohort_silos is not None:
            record["cohort_silos"] = args.cohort_silos
        if args.epsilon is not None:
            if args.period_days is None:
                raise PolicyError("--epsilon needs --period-days: the days the spend was accounted over")
            record["privacy"] = {
                "epsilon": args.epsilon,
                "delta": args.delta,
                "period_days": args.period_days,
            }
        if args.compressed is not None:
            record["compressed"] = args.compressed
        if args.layers is not None:
            record["layers"] = [x.strip() for x in args.layers.split(",") if x.strip()]
        if args.metadata is not None:
            record["metadata"] = [x.strip() for x in args.metadata.split(",") if x.strip()]
        if args.data_class:
            record["data_classes"] = list(args.data_class)
        flows.append(flow_from_record(record, "the flow described"))
    if not flows:
        raise PolicyError(
            "no flow to simulate: give --flows FILE or describe one with --artifact, --from, --to"
        )
    outcomes = simulate(policies, flows)
    print(render_outcomes(outcomes), end="")
    return 0 if all(o.allowed for o in outcomes) else 1
