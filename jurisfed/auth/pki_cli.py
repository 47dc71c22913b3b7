"""`jurisfed pki ...`: the federation CA, node certificates, token keys and revocation.

`add_pki_commands(subparsers)` adds the `pki` command to the `jurisfed` parser; each
subcommand sets `run`, which returns the exit status: 0 done, 2 the command could not run
(bad argument, missing or invalid file, a file it refuses to overwrite). No command ever
prints a private key; keys are written 0600 in 0700 directories.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization

from jurisfed.auth.enrolment import create_request, rotate, sign_request, write_certificate
from jurisfed.auth.identity import Identity, identity_from_certificate
from jurisfed.auth.key_files import write_file
from jurisfed.auth.pki import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    TlsFiles,
    check_issued_by,
    create_ca,
    issue,
    load_ca,
    read_certificate,
    serial_text,
)
from jurisfed.auth.pki_show import describe_file, validity, who
from jurisfed.auth.revocation import CRL_NAME, DEFAULT_CRL_DAYS, REASONS, publish_crl, revoke
from jurisfed.auth.token_keys import PEM_SUFFIX, generate_token_key
from jurisfed.auth.tokens import KID_PATTERN, Role
from jurisfed.errors import ConfigError, JurisfedError

__all__ = ["add_pki_commands"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_ERROR = 2

_IDENTITY_HELP = (
    "the node's identity, jurisfed://JURISDICTION/TIER/NODE (tier: silo, regional, global, operator)"
)
_KEY_ON_NODE = (
    "In production make the key on the node instead (`jurisfed pki request` there, `jurisfed pki sign` "
    "at the CA), so that it never leaves the node."
)


def add_pki_commands(subparsers: Subparsers) -> None:
    """Add `pki init-ca|issue|request|sign|rotate|token-key|revoke|crl|show` to a `jurisfed` parser."""
    pki = subparsers.add_parser(
        "pki",
        help="create the federation CA, issue, rotate and revoke node certificates, make token keys",
        description="Every node (silo, regional, global aggregator, operator console) proves who it is "
        "with a certificate from the federation CA whose URI names jurisdiction, tier and node, e.g. "
        "jurisfed://EU/silo/hospital-a. Running servers check a revocation list signed by the CA and "
        "pick up changes within a second. See docs/security.md.",
    )
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    _add_init_ca(commands)
    _add_issue(commands)
    _add_request(commands)
    _add_sign(commands)
    _add_rotate(commands)
    _add_token_key(commands)
    _add_revoke(commands)
    _add_crl(commands)
    _add_show(commands)


def _guarded(run: Command) -> Command:
    """Wrap a command so that a JurisfedError prints one clear line and exits 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except JurisfedError as error:
            print(f"jurisfed pki {args.pki_command}: {error}", file=sys.stderr)
            return EXIT_ERROR

    return wrapped


# --- argument types -------------------------------------------------------------------------------


def _identity(text: str) -> Identity:
    try:
        return Identity.parse(text)
    except JurisfedError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, not {days}")
    return days


def _serial(text: str) -> int:
    digits = text.strip().removeprefix("0x").removeprefix("0X").replace(":", "")
    try:
        serial = int(digits, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hexadecimal serial (e.g. 3F2A9C...)") from None
    if serial <= 0:
        raise argparse.ArgumentTypeError("a serial is a positive number")
    return serial


def _kid(text: str) -> str:
    if not KID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} must match {KID_PATTERN.pattern} (e.g. hospital-a-2025-01)"
        )
    return text


def _add_names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dns",
        action="append",
        metavar="NAME",
        help="a DNS name peers dial this node by (repeatable; default: localhost unless --ip is given)",
    )
    parser.add_argument(
        "--ip",
        action="append",
        metavar="ADDR",
        help="an IP address peers dial this node at (repeatable; default: 127.0.0.1 unless --dns is given)",
    )


def _names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.dns is None and args.ip is None:
        return ["localhost"], ["127.0.0.1"]
    return list(args.dns or ()), list(args.ip or ())


# --- init-ca --------------------------------------------------------------------------------------


def _add_init_ca(commands: Subparsers) -> None:
    init = commands.add_parser(
        "init-ca",
        help="create the federation root CA (ca.crt, ca.key 0600) and its empty revocation list",
        description="Create the federation's root CA in DIR: ca.crt (give it to every node), ca.key "
        "(0600; keep it offline, it signs every certificate) and crl.pem, the revocation list every "
        "server checks. Refuses to overwrite an existing CA.",
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the CA")
    init.add_argument("--name", default="jurisfed federation CA", help="the CA's common name")
    init.add_argument("--days", type=_days, default=3650, help="validity of the CA (default 3650)")
    init.add_argument(
        "--crl-days",
        type=_days,
        default=DEFAULT_CRL_DAYS,
        help=f"validity of the revocation list (default {DEFAULT_CRL_DAYS})",
    )
    init.set_defaults(run=_guarded(_init_ca))


def _init_ca(args: argparse.Namespace) -> int:
    create_ca(args.out, common_name=args.name, valid_days=args.days)
    crl_path, crl = publish_crl(args.out, valid_days=args.crl_days)
    print(f"CA certificate:  {args.out / CA_CERT_NAME} (give it to every node)")
    print(f"CA key:          {args.out / CA_KEY_NAME} (mode 0600; keep it offline)")
    print(f"revocation list: {crl_path} (give it to every server; valid until {crl.next_update:%Y-%m-%d})")
    return EXIT_OK


# --- issue, request, sign, rotate -----------------------------------------------------------------


def _add_issue(commands: Subparsers) -> None:
    issue_cmd = commands.add_parser(
        "issue",
        help="issue a node or operator certificate, making its key here (demos and tests)",
        description="Make a new key and a certificate for IDENTITY signed by the CA, and write "
        "DIR/tls.key (0600), DIR/tls.crt and DIR/ca.crt (DIR 0700). The key is made on this machine: "
        f"fine for a demo or a test. {_KEY_ON_NODE} Refuses a DIR that already holds a certificate "
        "(see `rotate`).",
    )
    issue_cmd.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    issue_cmd.add_argument("--identity", type=_identity, required=True, metavar="URI", help=_IDENTITY_HELP)
    issue_cmd.add_argument("--out", type=Path, required=True, metavar="DIR", help="the node's TLS directory")
    _add_names(issue_cmd)
    issue_cmd.add_argument("--days", type=_days, default=365, help="validity (default 365)")
    issue_cmd.set_defaults(run=_guarded(_issue))


def _issue(args: argparse.Namespace) -> int:
    target = TlsFiles.in_directory(args.out)
    for existing in (target.key, target.cert):
        if existing.exists():
            raise ConfigError(
                f"{existing} already exists; use `jurisfed pki rotate` to replace a certificate"
            )
    dns, ips = _names(args)
    files = issue(args.ca, args.identity, args.out, dns_names=dns, ip_addresses=ips, valid_days=args.days)
    cert = read_certificate(files.cert)
    print(f"issued {args.identity}, serial {serial_text(cert.serial_number)}, {validity(cert)}")
    print(f"certificate: {files.cert}\nkey:         {files.key} (mode 0600)\nCA:          {files.ca_cert}")
    print(f"note: the key was made on this machine. {_KEY_ON_NODE}")
    return EXIT_OK


def _add_request(commands: Subparsers) -> None:
    request = commands.add_parser(
        "request",
        help="on the node: make its key and a certificate signing request for the CA",
        description="Run on the node itself. Make a new key DIR/tls.key (0600, never leaves this machine) "
        "and DIR/tls.csr, the request to send to the CA operator, who signs it with `jurisfed pki sign`. "
        "Put the certificate that comes back in DIR/tls.crt and the CA's ca.crt in DIR/ca.crt. "
        "Refuses a DIR that already holds a key: to renew, request into a new directory and switch.",
    )
    request.add_argument("--identity", type=_identity, required=True, metavar="URI", help=_IDENTITY_HELP)
    request.add_argument("--out", type=Path, required=True, metavar="DIR", help="the node's TLS directory")
    _add_names(request)
    request.set_defaults(run=_guarded(_request))


def _request(args: argparse.Namespace) -> int:
    dns, ips = _names(args)
    csr = create_request(args.identity, args.out, dns_names=dns, ip_addresses=ips)
    print(f"key:     {args.out / 'tls.key'} (mode 0600; stays on this machine)")
    print(f"request: {csr} (send it to the CA operator)")
    return EXIT_OK


def _add_sign(commands: Subparsers) -> None:
    sign = commands.add_parser(
        "sign",
        help="at the CA: sign a node's certificate request",
        description="Check that the request FILE names IDENTITY and that its signature verifies, then "
        "write the certificate to OUT (refusing to overwrite). The certificate gets the request's DNS "
        "and IP names and jurisfed's own extensions. Send OUT and the CA's ca.crt back to the node.",
    )
    sign.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    sign.add_argument("--csr", type=Path, required=True, metavar="FILE", help="the node's tls.csr")
    sign.add_argument(
        "--identity",
        type=_identity,
        required=True,
        metavar="URI",
        help="whom you mean to certify; a request for anyone else is refused",
    )
    sign.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="where to write the certificate"
    )
    sign.add_argument("--days", type=_days, default=365, help="validity (default 365)")
    sign.set_defaults(run=_guarded(_sign))


def _sign(args: argparse.Namespace) -> int:
    cert = sign_request(args.ca, args.csr, args.identity, valid_days=args.days)
    write_certificate(args.out, cert)
    print(f"issued {args.identity}, serial {serial_text(cert.serial_number)}, {validity(cert)}")
    print(
        f"certificate: {args.out} (install as tls.crt on the node, with {args.ca / CA_CERT_NAME} as ca.crt)"
    )
    return EXIT_OK


def _add_rotate(commands: Subparsers) -> None:
    rotate_cmd = commands.add_parser(
        "rotate",
        help="re-issue a node's certificate with a new key (same identity and names)",
        description="Replace DIR/tls.key and DIR/tls.crt with a new key and a certificate for the same "
        "identity, DNS and IP names; restart the node to use them. The old certificate is NOT revoked: "
        "it stays valid until it expires, or until you revoke it (the command prints how) once the "
        f"node runs on the new one. {_KEY_ON_NODE}",
    )
    rotate_cmd.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    rotate_cmd.add_argument(
        "--node", type=Path, required=True, metavar="DIR", help="the node's TLS directory"
    )
    rotate_cmd.add_argument("--days", type=_days, default=365, help="validity (default 365)")
    rotate_cmd.set_defaults(run=_guarded(_rotate))


def _rotate(args: argparse.Namespace) -> int:
    old, files = rotate(args.ca, args.node, valid_days=args.days)
    new = read_certificate(files.cert)
    identity = identity_from_certificate(new)
    print(f"rotated {identity}: serial {serial_text(old.serial_number)} -> {serial_text(new.serial_number)}")
    print(f"certificate: {files.cert}, {validity(new)}\nkey:         {files.key} (mode 0600)")
    print(f"the old certificate stays valid until {old.not_valid_after_utc:%Y-%m-%d}; once the node runs on")
    print(
        f"the new one, retire it: jurisfed pki revoke --ca {args.ca} "
        f"--serial {serial_text(old.serial_number)} --reason superseded"
    )
    return EXIT_OK


# --- token keys -----------------------------------------------------------------------------------


def _add_token_key(commands: Subparsers) -> None:
    token_key = commands.add_parser(
        "token-key",
        help="make a node's P-256 token signing key (KID.key, 0600) and its public half (KID.pem)",
        description="Run on the node. Make the key the node signs its per-call tokens with, DIR/KID.key "
        "(0600, never leaves the node), and its public half DIR/KID.pem. Install KID.pem in the key "
        "set of every aggregator the node calls, as token-keys/ROLE/KID.pem; they pick it up without "
        "a restart. Refuses to overwrite.",
    )
    token_key.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the key")
    token_key.add_argument(
        "--kid", type=_kid, required=True, help="the key id, also the file name (e.g. hospital-a-2025-01)"
    )
    token_key.set_defaults(run=_guarded(_token_key))


def _token_key(args: argparse.Namespace) -> int:
    private_path, public_path = args.out / f"{args.kid}.key", args.out / f"{args.kid}{PEM_SUFFIX}"
    if public_path.exists():
        raise ConfigError(f"{public_path} already exists; refusing to overwrite a token key")
    key = generate_token_key(private_path)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file(public_path, public_pem, mode=0o644, exclusive=True)
    roles = "|".join(role.value for role in Role)
    print(f"private key: {private_path} (mode 0600; stays on this node)")
    print(f"public key:  {public_path}")
    print(f"install it on each aggregator this node calls as token-keys/<{roles}>/{public_path.name}")
    return EXIT_OK


# --- revocation -----------------------------------------------------------------------------------


def _add_crl_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    parser.add_argument(
        "--crl", type=Path, metavar="FILE", help=f"the revocation list (default DIR/{CRL_NAME})"
    )
    parser.add_argument(
        "--crl-days",
        type=_days,
        default=DEFAULT_CRL_DAYS,
        help=f"the list's new validity (default {DEFAULT_CRL_DAYS}); servers refuse everyone once it passes",
    )


def _add_revoke(commands: Subparsers) -> None:
    revoke_cmd = commands.add_parser(
        "revoke",
        help="revoke a certificate: add it to the CA-signed revocation list",
        description="Add the certificate's serial to the revocation list and sign it again (atomically). "
        "Servers that check the list refuse that certificate within about a second, on new and open "
        "connections alike, without a restart. Revoking twice changes nothing.",
    )
    which = revoke_cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", type=Path, metavar="FILE", help="the certificate to revoke")
    which.add_argument(
        "--serial", type=_serial, metavar="HEX", help="its serial, as `show` or `rotate` print it"
    )
    _add_crl_options(revoke_cmd)
    revoke_cmd.add_argument(
        "--reason", choices=sorted(REASONS), help="why (recorded in the list; default: none given)"
    )
    revoke_cmd.set_defaults(run=_guarded(_revoke))


def _revoke(args: argparse.Namespace) -> int:
    if args.cert is not None:
        cert = read_certificate(args.cert)
        check_issued_by(cert, load_ca(args.ca)[0], args.cert)
        serial, subject = cert.serial_number, f"{who(cert)} (serial {serial_text(cert.serial_number)})"
    else:
        serial, subject = args.serial, f"serial {serial_text(args.serial)}"
    reason = REASONS[args.reason] if args.reason else None
    revocation, new = revoke(args.ca, serial, crl_path=args.crl, reason=reason, valid_days=args.crl_days)
    crl_path = args.crl or args.ca / CRL_NAME
    if not new:
        when = f"{revocation.revoked_at:%Y-%m-%d %H:%M} UTC"
        print(f"{subject} was already revoked on {when}; {crl_path} unchanged")
        return EXIT_OK
    print(f"revoked {subject}")
    print(f"revocation list: {crl_path} (copy it to every server; they re-read it within a second)")
    return EXIT_OK


def _add_crl(commands: Subparsers) -> None:
    crl = commands.add_parser(
        "crl",
        help="publish the revocation list again with fresh dates (create it if missing)",
        description="Sign the revocation list again with the same entries and a new validity, or create "
        "an empty one. Do this before its nextUpdate date (`jurisfed pki show FILE`): servers refuse "
        "every certificate while their list is out of date.",
    )
    _add_crl_options(crl)
    crl.set_defaults(run=_guarded(_crl))


def _crl(args: argparse.Namespace) -> int:
    path, crl = publish_crl(args.ca, args.crl, valid_days=args.crl_days)
    print(f"revocation list: {path}, number {crl.number}, {len(crl.revoked)} revoked certificate(s)")
    print(f"valid until {crl.next_update:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


# --- show -----------------------------------------------------------------------------------------


def _add_show(commands: Subparsers) -> None:
    show = commands.add_parser(
        "show",
        help="describe a certificate, a certificate request or a revocation list",
        description="Print what FILE holds: for a certificate its identity, serial, validity and names "
        "(with --crl, whether it is revoked); for a request whom it asks for; for a revocation list its "
        "dates and entries. Private keys are never shown.",
    )
    show.add_argument("file", type=Path, metavar="FILE", help="a .crt, .csr or crl.pem file")
    show.add_argument(
        "--ca", type=Path, metavar="PATH", help="the CA directory or its ca.crt, to verify signatures"
    )
    show.add_argument("--crl", type=Path, metavar="FILE", help="also say whether the certificate is revoked")
    show.set_defaults(run=_guarded(_show))


def _show(args: argparse.Namespace) -> int:
    for line in describe_file(args.file, ca=args.ca, crl=args.crl):
        print(line)
    return EXIT_OK
