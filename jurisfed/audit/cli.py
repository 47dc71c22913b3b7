"""`jurisfed audit verify|export|verify-bundle|keygen`: check audit logs offline and export evidence.

Exit status of `verify`: 0 verified; 1 tampering, truncation or a fork was found; 3 only an
append interrupted by a crash was found (everything before it verifies); 2 the command could
not run (missing file, bad arguments).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed.audit.errors import AuditIntegrityError
from jurisfed.audit.export import (
    PSEUDONYM_KEY_BYTES,
    Selection,
    build_bundle,
    compare_with_log,
    read_bundle,
    verify_bundle,
    write_bundle,
)
from jurisfed.audit.keys import create_signing_key, fingerprint, key_id, load_public_keys, public_path
from jurisfed.audit.report import render_html
from jurisfed.audit.verify import LogReport, verify_log
from jurisfed.errors import ConfigError, InvalidInput

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 3


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="verify tamper-evident audit logs and export evidence for regulators",
        description="Every tier keeps an append-only audit log whose records are hashed into a Merkle "
        "tree and signed (Ed25519) at checkpoints; aggregators keep copies of each other's checkpoints "
        "(witness files). These commands check a log offline and export evidence bundles.",
    )
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    verify = actions.add_parser(
        "verify",
        help="check a log, its signed checkpoints and what witnesses saw of it",
        description="Recompute every record's hash, the hash links and the Merkle root at every signed "
        "checkpoint; compare with checkpoints held by witnesses. Reports each edited, deleted, moved "
        "or truncated record with its line and sequence number. Exit status: 0 verified, 1 tampered, "
        "truncated or forked, 3 only an append interrupted by a crash, 2 could not run.",
    )
    verify.add_argument("log", type=Path, metavar="LOG", help="the audit log file (JSON lines)")
    _add_key_option(verify)
    verify.add_argument(
        "--witness",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a witness file kept by a peer aggregator (repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(run=_verify)

    export = actions.add_parser(
        "export",
        help="write an evidence bundle (JSON + HTML report) for a round or a range",
        description="Verify LOG, then write OUT/evidence.json (records, inclusion proofs, the signed "
        "checkpoint) and OUT/evidence.html (a report a non-engineer can read). Silos outside the "
        "audience's jurisdiction appear under keyed pseudonyms. The range must be covered by a signed "
        "checkpoint (tiers sign at the end of each round and when they stop).",
    )
    export.add_argument("log", type=Path, metavar="LOG", help="the audit log file")
    export.add_argument("--round", type=int, dest="round_number", metavar="N", help="export round N")
    export.add_argument(
        "--from", dest="start", metavar="SEQ|TIME", help="first record: a sequence number or ISO time"
    )
    export.add_argument(
        "--to", dest="end", metavar="SEQ|TIME", help="last record: a sequence number or ISO time"
    )
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write the bundle to"
    )
    export.add_argument(
        "--audience",
        metavar="JURISDICTION",
        help="jurisdiction of the reader; its silos are named, others pseudonymised (default: the log's own)",
    )
    export.add_argument(
        "--pseudonym-key",
        type=Path,
        metavar="FILE",
        help=f"secret of at least {PSEUDONYM_KEY_BYTES} bytes that keeps pseudonyms the same across "
        "bundles (default: a fresh one per bundle)",
    )
    _add_key_option(export)
    export.set_defaults(run=_export)

    check = actions.add_parser(
        "verify-bundle",
        help="check an evidence bundle against its signed checkpoint (and optionally the log)",
        description="Check the checkpoint signature, every record's inclusion proof, that the range has "
        "no holes and that disclosed names match what was logged. Exit status 0 verified, 1 not.",
    )
    check.add_argument("bundle", type=Path, metavar="BUNDLE", help="evidence.json")
    _add_key_option(check)
    check.add_argument("--log", type=Path, metavar="LOG", help="also compare with this audit log")
    check.set_defaults(run=_verify_bundle)

    keygen = actions.add_parser(
        "keygen",
        help="create an Ed25519 checkpoint signing key (PATH, 0600) and its public key (PATH.pub)",
        description="Create the key a tier signs its audit checkpoints with. Publish the fingerprint "
        "it prints, and give PATH.pub to the peers that witness this tier's log.",
    )
    keygen.add_argument("path", type=Path, metavar="PATH", help="where to write the private key")
    keygen.set_defaults(run=_keygen)


def _add_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        action="append",
        metavar="PUB",
        help="trusted public key file(s) of the log's signer (repeatable); default: LOG.pub next to the "
        "log, which proves less, since whoever can rewrite the log can replace it",
    )


def _keys(args: argparse.Namespace) -> list[Ed25519PublicKey] | None:
    if not args.key:
        return None
    return [key for path in args.key for key in load_public_keys(path)]


def _verify(args: argparse.Namespace) -> int:
    try:
        report = verify_log(args.log, _keys(args), args.witness)
    except (ConfigError, InvalidInput) as error:
        return _error("verify", error)
    if args.json:
        print(json.dumps(_report_json(report), indent=2))
    else:
        print(_report_text(report))
    if report.tampered:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if report.interrupted else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    try:
        selection = _selection(args)
        secret = _pseudonym_key(args.pseudonym_key) if args.pseudonym_key else None
        keys = _keys(args)
        bundle = build_bundle(args.log, selection, audience=args.audience, pseudonym_key=secret, keys=keys)
        report = verify_bundle(bundle, keys)
        json_path, html_path = write_bundle(bundle, render_html(report), args.out)
    except AuditIntegrityError as error:
        print(f"jurisfed audit export: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, InvalidInput) as error:
        return _error("export", error)
    verdict = "verified" if report.ok else "NOT verified: " + "; ".join(report.problems)
    print(f"{len(report.entries)} records of {report.origin} ({selection.describe()}), {verdict}")
    print(f"bundle: {json_path}\nreport: {html_path}")
    return EXIT_OK if report.ok else EXIT_FAILED


def _verify_bundle(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args)
        report = verify_bundle(read_bundle(args.bundle), keys)
        problems = list(report.problems)
        if args.log is not None:
            problems += compare_with_log(report, args.log, keys)
    except (ConfigError, InvalidInput) as error:
        return _error("verify-bundle", error)
    cp = report.checkpoint
    print(f"bundle:  {args.bundle} ({report.selection} of {report.origin}, {len(report.entries)} records)")
    pinned = "" if report.key_pinned else " (key taken from the bundle; pin it with --key)"
    print(
        f"signed:  {cp.size} records at {cp.time:%Y-%m-%d %H:%M:%S} UTC, key {fingerprint(cp.key_id)}{pinned}"
    )
    if problems:
        print("result:  FAILED")
        for problem in problems:
            print(f"  {problem}")
        return EXIT_FAILED
    print("result:  VERIFIED")
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    try:
        key = create_signing_key(args.path)
    except ConfigError as error:
        return _error("keygen", error)
    print(f"private key: {args.path} (mode 0600)\npublic key:  {public_path(args.path)}")
    print(f"fingerprint: {fingerprint(key_id(key.public_key()))}")
    return EXIT_OK


def _selection(args: argparse.Namespace) -> Selection:
    if args.round_number is not None and (args.start or args.end):
        raise InvalidInput("give either --round or --from/--to, not both")
    first, since = _bound(args.start, "--from")
    last, until = _bound(args.end, "--to")
    return Selection(args.round_number, first, last, since, until)


def _bound(text: str | None, option: str) -> tuple[int | None, datetime.datetime | None]:
    if text is None:
        return None, None
    if text.isdigit():
        return int(text), None
    try:
        time = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{option} {text!r} is neither a sequence number nor an ISO 8601 time") from None
    return None, time if time.tzinfo is not None else time.replace(tzinfo=datetime.UTC)


def _pseudonym_key(path: Path) -> bytes:
    try:
        secret = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"pseudonym key {path} cannot be read: {error.strerror}") from None
    if len(secret) < PSEUDONYM_KEY_BYTES:
        raise ConfigError(f"pseudonym key {path} must hold at least {PSEUDONYM_KEY_BYTES} bytes")
    return secret


def _report_text(report: LogReport) -> str:
    lines = [f"audit log: {report.path}", f"owner:     {report.origin or 'unknown'}"]
    signed = report.latest.size if report.latest is not None else 0
    keys = ", ".join(fingerprint(k) for k in report.key_ids) or "none"
    pinned = "pinned with --key" if report.keys_pinned else "read from LOG.pub"
    lines.append(
        f"records:   {report.records}; signed up to {signed} ({report.checkpoints} checkpoints verified)"
    )
    lines.append(f"keys:      {keys} ({pinned})")
    if report.witnessed:
        lines.append(f"witnessed: {report.witnessed} checkpoint(s) held by witnesses compared")
    lines.append(f"result:    {report.verdict()}")
    lines += [f"  {finding}" for finding in report.findings]
    return "\n".join(lines)


def _report_json(report: LogReport) -> dict[str, object]:
    return {
        "log": str(report.path),
        "origin": None if report.origin is None else report.origin.uri,
        "records": report.records,
        "signed_size": report.latest.size if report.latest is not None else 0,
        "checkpoints": report.checkpoints,
        "key_ids": list(report.key_ids),
        "keys_pinned": report.keys_pinned,
        "witnessed": report.witnessed,
        "verdict": "tampered" if report.tampered else "interrupted" if report.interrupted else "verified",
        "findings": [
            {
                "problem": str(f.problem),
                "severity": str(f.severity),
                "file": f.file,
                "line": f.line,
                "sequence": f.sequence,
                "message": f.message,
            }
            for f in report.findings
        ],
    }


def _error(action: str, error: Exception) -> int:
    print(f"jurisfed audit {action}: {error}", file=sys.stderr)
    return EXIT_ERROR
