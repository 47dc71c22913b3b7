"""Evidence bundles: a round (or a range) of an audit log, with the proof that it is the signed log.

A bundle holds, for each record of a contiguous range of the log, its *sealed* form (node names
replaced by salted commitments), its inclusion proof against one signed checkpoint, and the
openings (name, salt) of the node names the audience may see. Silos outside the audience's
jurisdiction stay sealed and are shown under a keyed pseudonym, consistent within the bundle.
Anyone holding the log's public key can check, without the log, that every record is in the
signed log at its sequence number, that the range has no holes (numbers and hash links run
on), and that every disclosed name is the one that was written.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed.audit.checkpoint import SignedCheckpoint
from jurisfed.audit.errors import AuditIntegrityError
from jurisfed.audit.events import (
    AuditRecord,
    Json,
    MalformedRecord,
    format_time,
    node_commitment,
    parse_time,
    sealed_leaf_hash,
)
from jurisfed.audit.keys import keys_by_id, load_public_keys, parse_public_keys, public_path, public_pem
from jurisfed.audit.merkle import verify_inclusion
from jurisfed.audit.verify import Severity, inspect_log
from jurisfed.auth.identity import Identity, Tier
from jurisfed.errors import ConfigError, InvalidInput

BUNDLE_FORMAT = "jurisfed-audit-evidence/v1"
BUNDLE_NAME = "evidence.json"
REPORT_NAME = "evidence.html"
PSEUDONYM_KEY_BYTES = 32
_IDENTITY_FIELDS = ("actor", "subject")


@dataclass(frozen=True)
class Selection:
    """Which records to export: one round, or a range of sequence numbers and/or times."""

    round_number: int | None = None
    first_sequence: int | None = None
    last_sequence: int | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def __post_init__(self) -> None:
        ranged = (self.first_sequence, self.last_sequence, self.since, self.until)
        if (self.round_number is None) == all(value is None for value in ranged):
            raise InvalidInput("select either one round or a range (from/to)")

    def matches(self, record: AuditRecord) -> bool:
        if self.round_number is not None:
            return record.event.round_number == self.round_number
        return (
            (self.first_sequence is None or record.sequence >= self.first_sequence)
            and (self.last_sequence is None or record.sequence <= self.last_sequence)
            and (self.since is None or record.time >= self.since)
            and (self.until is None or record.time <= self.until)
        )

    def describe(self) -> str:
        if self.round_number is not None:
            return f"round {self.round_number}"
        parts = []
        if self.first_sequence is not None or self.last_sequence is not None:
            parts.append(f"records {self.first_sequence or 0} to {_or(self.last_sequence, 'the end')}")
        if self.since is not None or self.until is not None:
            since = "the start" if self.since is None else format_time(self.since)
            until = "the end" if self.until is None else format_time(self.until)
            parts.append(f"from {since} to {until}")
        return ", ".join(parts)


@dataclass(frozen=True)
class SealedIdentity:
    jurisdiction: str
    tier: str
    commitment: str
    node: str | None  # disclosed name, when the audience may see it
    pseudonym: str | None

    @property
    def label(self) -> str:
        if self.node is not None:
            return f"{self.jurisdiction}/{self.tier}/{self.node}"
        return self.pseudonym or f"{self.jurisdiction} {self.tier} (undisclosed)"


@dataclass(frozen=True)
class BundleEntry:
    """One verified record of a bundle, as the report shows it."""

    sequence: int
    time: datetime.datetime
    kind: str
    actor: SealedIdentity
    subject: SealedIdentity | None
    jurisdiction: str
    round_number: int | None
    policy_hash: str | None
    decision: str | None
    rule: str | None
    digests: dict[str, str]
    details: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class BundleReport:
    origin: Identity
    checkpoint: SignedCheckpoint
    key_pinned: bool
    selection: str
    round_number: int | None
    audience: str
    created: datetime.datetime
    entries: tuple[BundleEntry, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def build_bundle(
    log_path: Path,
    selection: Selection,
    *,
    audience: str | None = None,
    pseudonym_key: bytes | None = None,
    keys: Sequence[Ed25519PublicKey] | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Json]:
    """The evidence bundle (JSON value) for `selection` of the log at `log_path`.

    The log must verify first. `audience` is the jurisdiction of the reader (default: the
    log's own); `pseudonym_key` makes pseudonyms repeatable across bundles (default: fresh).
    """
    report, scan = inspect_log(log_path, keys)
    if report.tampered or report.latest is None:
        problems = "; ".join(str(f) for f in report.findings if f.severity is Severity.TAMPERING)
        raise AuditIntegrityError(f"{log_path} does not verify, so it cannot give evidence: {problems}")
    checkpoint = report.latest
    records = [r for r in scan.records if r is not None]
    chosen = [r.sequence for r in records if selection.matches(r)]
    if not chosen:
        raise InvalidInput(f"{log_path} has no records for {selection.describe()}")
    first, last = min(chosen), max(chosen)
    if last >= checkpoint.size:
        raise InvalidInput(
            f"{selection.describe()} reaches record {last}, but the newest signed checkpoint covers only "
            f"records 0..{checkpoint.size - 1}; export again once the log has signed a checkpoint "
            "(tiers sign one when a round ends and when they stop)"
        )
    audience = audience or checkpoint.origin.jurisdiction
    secret = pseudonym_key if pseudonym_key is not None else os.urandom(PSEUDONYM_KEY_BYTES)
    public = keys_by_id(keys if keys is not None else load_public_keys(public_path(log_path)))
    entries: list[Json] = []
    for record in records[first : last + 1]:
        sealed = record.sealed()
        disclosed: dict[str, Json] = {}
        pseudonyms: dict[str, Json] = {}
        for field, identity, salt in (
            ("actor", record.event.actor, record.actor_salt),
            ("subject", record.event.subject, record.subject_salt),
        ):
            if identity is None or salt is None:
                continue
            if _hidden_from(identity.jurisdiction, identity.tier.value, audience):
                pseudonyms[field] = pseudonym(identity, secret)
            else:
                disclosed[field] = {"node": identity.node, "salt": salt.hex()}
        entries.append(
            {
                "sequence": record.sequence,
                "record": sealed,
                "proof": [step.hex() for step in scan.tree.inclusion_proof(record.sequence, checkpoint.size)],
                "disclosed": disclosed,
                "pseudonyms": pseudonyms,
            }
        )
    return {
        "format": BUNDLE_FORMAT,
        "created": format_time(now or datetime.datetime.now(datetime.UTC)),
        "log": {
            "origin": checkpoint.origin.uri,
            "file": log_path.name,
            "key_id": checkpoint.key_id,
            "public_key": public_pem(public[checkpoint.key_id]).decode(),
        },
        "checkpoint": checkpoint.to_json(),
        "selection": selection.describe(),
        "round": selection.round_number,
        "audience": audience,
        "entries": entries,
    }


def verify_bundle(bundle: Json, keys: Sequence[Ed25519PublicKey] | None = None) -> BundleReport:
    """Check a bundle against its signed checkpoint; `keys` pins the signer (else the bundle's key)."""
    try:
        return _verify(bundle, keys)
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as error:
        raise InvalidInput(f"not an evidence bundle ({type(error).__name__}: {error})") from None


def compare_with_log(
    report: BundleReport, log_path: Path, keys: Sequence[Ed25519PublicKey] | None = None
) -> list[str]:
    """Problems found when holding a verified bundle against the log it claims to come from."""
    log_report, scan = inspect_log(log_path, keys)
    problems = [f"the log: {f}" for f in log_report.findings if f.severity is Severity.TAMPERING]
    signed = report.checkpoint
    if signed.size > scan.tree.size or scan.tree.root(signed.size) != signed.root:
        problems.append(f"the bundle's checkpoint ({signed.size} records) is not a state of {log_path}")
    if report.round_number is not None and report.entries:
        first, last = report.entries[0].sequence, report.entries[-1].sequence
        outside = [
            r.sequence
            for r in scan.records[: signed.size]
            if r is not None
            and r.event.round_number == report.round_number
            and not first <= r.sequence <= last
        ]
        if outside:
            problems.append(
                f"the log has records of round {report.round_number} the bundle leaves out: {outside}"
            )
    return problems


def write_bundle(bundle: dict[str, Json], report_html: str, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / BUNDLE_NAME, out_dir / REPORT_NAME
    json_path.write_text(json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    html_path.write_text(report_html, encoding="utf-8")
    return json_path, html_path


def read_bundle(path: Path) -> Json:
    try:
        value: Json = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"evidence bundle {path} cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise InvalidInput(f"{path} is not JSON: {error}") from None
    return value


def pseudonym(identity: Identity, secret: bytes) -> str:
    """A keyed, repeatable alias: the same node gets the same alias under the same key."""
    digest = hmac.new(secret, identity.uri.encode(), hashlib.sha256).hexdigest()
    return f"{identity.jurisdiction} {identity.tier.value} #{digest[:12]}"


def _verify(bundle: Json, keys: Sequence[Ed25519PublicKey] | None) -> BundleReport:
    data = _object(bundle)
    if data.get("format") != BUNDLE_FORMAT:
        raise InvalidInput(f"format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    log = _object(data["log"])
    checkpoint = SignedCheckpoint.from_json(data["checkpoint"])
    audience = str(data["audience"])
    problems: list[str] = []
    trusted = (
        keys_by_id(keys)
        if keys is not None
        else keys_by_id(parse_public_keys(str(log["public_key"]).encode()))
    )
    key = trusted.get(checkpoint.key_id)
    if key is None:
        problems.append(f"the checkpoint is signed by key {checkpoint.key_id[:16]}..., which is not trusted")
    elif not checkpoint.verify(key):
        problems.append("the checkpoint's signature is invalid")
    if log["origin"] != checkpoint.origin.uri or log["key_id"] != checkpoint.key_id:
        problems.append("the bundle's log description does not match its signed checkpoint")
    entries: list[BundleEntry] = []
    previous_leaf: bytes | None = None
    for raw in _list(data["entries"]):
        item = _object(raw)
        sequence = int(str(item["sequence"]))
        sealed = _object(item["record"])
        leaf = sealed_leaf_hash(sealed)
        where = f"record {sequence}"
        proof = [bytes.fromhex(str(step)) for step in _list(item["proof"])]
        if sealed.get("seq") != sequence:
            problems.append(f"{where}: its sequence number inside the record is {sealed.get('seq')}")
        if not verify_inclusion(leaf, sequence, checkpoint.size, proof, checkpoint.root):
            problems.append(f"{where}: not in the signed log (its inclusion proof fails)")
        if entries and sequence != entries[-1].sequence + 1:
            problems.append(f"{where}: follows record {entries[-1].sequence}; the range has a hole")
        if previous_leaf is not None and sealed.get("previous") != previous_leaf.hex():
            problems.append(f"{where}: does not link to the record before it")
        previous_leaf = leaf
        entries.append(_entry(sequence, sealed, item, audience, problems))
    if not entries:
        problems.append("the bundle holds no records")
    round_number = data.get("round")
    ends = {entries[0].round_number, entries[-1].round_number} if entries else set()
    if round_number is not None and ends and ends != {round_number}:
        problems.append(f"the range does not start and end with records of round {round_number}")
    return BundleReport(
        origin=checkpoint.origin,
        checkpoint=checkpoint,
        key_pinned=keys is not None,
        selection=str(data["selection"]),
        round_number=None if round_number is None else int(str(round_number)),
        audience=audience,
        created=parse_time(str(data["created"])),
        entries=tuple(entries),
        problems=tuple(problems),
    )


def _entry(
    sequence: int, sealed: dict[str, Json], item: dict[str, Json], audience: str, problems: list[str]
) -> BundleEntry:
    disclosed = _object(item.get("disclosed", {}))
    pseudonyms = _object(item.get("pseudonyms", {}))
    identities: dict[str, SealedIdentity | None] = {}
    for field in _IDENTITY_FIELDS:
        value = sealed.get(field)
        if value is None:
            identities[field] = None
            continue
        sealed_identity = _object(value)
        jurisdiction, tier = str(sealed_identity["jurisdiction"]), str(sealed_identity["tier"])
        commitment = str(sealed_identity["node_commitment"])
        node: str | None = None
        if field in disclosed:
            opening = _object(disclosed[field])
            node = str(opening["node"])
            if node_commitment(node, bytes.fromhex(str(opening["salt"]))) != commitment:
                problems.append(
                    f"record {sequence}: the disclosed {field} name is not the one that was logged"
                )
            if _hidden_from(jurisdiction, tier, audience):
                problems.append(
                    f"record {sequence}: discloses a {jurisdiction} silo to a {audience} audience"
                )
        alias = pseudonyms.get(field)
        identities[field] = SealedIdentity(
            jurisdiction, tier, commitment, node, None if alias is None else str(alias)
        )
    actor = identities["actor"]
    if actor is None:
        raise MalformedRecord(f"record {sequence} has no actor")
    details = {
        str(k): v for k, v in _object(sealed["details"]).items() if isinstance(v, str | int | float | bool)
    }
    return BundleEntry(
        sequence=sequence,
        time=parse_time(str(sealed["time"])),
        kind=str(sealed["kind"]),
        actor=actor,
        subject=identities["subject"],
        jurisdiction=str(sealed["jurisdiction"]),
        round_number=None if sealed["round"] is None else int(str(sealed["round"])),
        policy_hash=_optional(sealed["policy_hash"]),
        decision=_optional(sealed["decision"]),
        rule=_optional(sealed["rule"]),
        digests={str(k): str(v) for k, v in _object(sealed["digests"]).items()},
        details=details,
    )


def _hidden_from(jurisdiction: str, tier: str, audience: str) -> bool:
    """Silo names are shown only to their own jurisdiction."""
    return tier == Tier.SILO.value and jurisdiction != audience


def _object(value: Json) -> dict[str, Json]:
    if not isinstance(value, dict):
        raise MalformedRecord("expected a JSON object")
    return value


def _list(value: Json) -> list[Json]:
    if not isinstance(value, list):
        raise MalformedRecord("expected a JSON list")
    return value


def _optional(value: Json) -> str | None:
    return None if value is None else str(value)


def _or(value: int | None, default: str) -> str:
    return default if value is None else str(value)
