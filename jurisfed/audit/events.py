"""What the audit log records: events, the records that number and chain them, canonical JSON.

An `AuditEvent` is what a tier says happened: who acted, about whom, in which jurisdiction and
round, under which policy, what was decided by which rule, and SHA-256 digests of whatever was
involved (an update, an aggregate, a contract). Never a payload: `details` holds a few scalars
(counts, thresholds, epsilon), and a string that names a node is refused there, because node
names belong in `actor` and `subject`, where they can be hidden.

The log turns an event into an `AuditRecord`: its sequence number (its leaf index in the
Merkle tree), the time, the hash of the record before it, and a random salt for each node
name. A record is hashed into the tree in its *sealed* form, in which every node name is
replaced by ``SHA-256(domain || salt || name)``. An evidence bundle can therefore show a silo
under a pseudonym and still prove, with the same leaf hash the log signed, that the record is
exactly what was written; revealing (name, salt) opens the commitment.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from jurisfed.audit.merkle import leaf_hash
from jurisfed.auth.identity import SCHEME, Identity, Tier
from jurisfed.errors import InvalidInput, JurisfedError

FORMAT_VERSION = 1
GENESIS = "0" * 64  # the `previous` of record 0

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None
Scalar: TypeAlias = str | int | float | bool
_Value = TypeVar("_Value")

SALT_BYTES = 16
_COMMITMENT_DOMAIN = b"jurisfed-audit-node/v1\x00"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_JURISDICTION = re.compile(r"[A-Z0-9]{2,16}")
_POLICY_HASH = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_MAX_TEXT = 1000
_MAX_ENTRIES = 32


class MalformedRecord(InvalidInput, ValueError):
    """A log line, checkpoint or bundle entry that is not well formed (INVALID_ARGUMENT to a peer)."""


class EventKind(enum.StrEnum):
    """What happened. `docs/audit.md` lists which tier records which kind."""

    SILO_REGISTERED = "silo_registered"
    POLICY_DECISION = "policy_decision"  # decision allow/deny + rule
    CONTRACT_ISSUED = "contract_issued"
    CONTRACT_DECISION = "contract_decision"  # decision allow (accepted) / deny (refused) + rule
    ELIGIBILITY_EXCLUSION = "eligibility_exclusion"
    UPDATE_RECEIVED = "update_received"
    DROPOUT = "dropout"
    QUARANTINE = "quarantine"
    AGGREGATE_SENT = "aggregate_sent"
    AGGREGATE_RECEIVED = "aggregate_received"
    GATE = "gate"  # decision pass/fail
    COMMIT = "commit"
    ROLLBACK = "rollback"
    KEY_CHANGE = "key_change"
    CERTIFICATE_CHANGE = "certificate_change"
    WITNESSED_CHECKPOINT = "witnessed_checkpoint"
    WITNESS_CONFLICT = "witness_conflict"
    LOG_OPENED = "log_opened"
    LOG_RECOVERED = "log_recovered"
    HEALTH_CHANGE = "health_change"  # serving true/false + reason (e.g. the upstream unreachable)


class Decision(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PASS = "pass"  # noqa: S105 - a gate outcome, not a password
    FAIL = "fail"


class Detail(enum.StrEnum):
    """Detail keys the evidence report knows how to show; others are listed as they are."""

    CODE_VERSION = "code_version"
    MODEL_SIGNATURE = "model_signature"
    CONTENT_SIGNATURE = "content_signature"  # hex DER signature over (round, sender, content digest)
    EXAMPLE_COUNT = "example_count"
    COHORT_SIZE = "cohort_size"
    COMPRESSION = "compression"
    BYTES = "bytes"
    DP_EPSILON = "dp_epsilon"
    DP_DELTA = "dp_delta"
    METRIC = "metric"
    VALUE = "value"
    THRESHOLD = "threshold"
    REASON = "reason"
    CHECKPOINT_VERSION = "checkpoint_version"


_DECISIONS_BY_KIND = {
    EventKind.POLICY_DECISION: (Decision.ALLOW, Decision.DENY),
    EventKind.CONTRACT_DECISION: (Decision.ALLOW, Decision.DENY),
    EventKind.GATE: (Decision.PASS, Decision.FAIL),
}
_NEEDS_RULE = (EventKind.POLICY_DECISION, EventKind.CONTRACT_DECISION)


@dataclass(frozen=True)
class AuditEvent:
    """One decision or fact that an auditor may ask about.

    `jurisdiction` is the jurisdiction the event concerns (whose data, policy or budget);
    `subject` the node it is about (the silo excluded, the regional whose aggregate arrived).
    """

    kind: EventKind
    actor: Identity
    jurisdiction: str
    round_number: int | None = None
    subject: Identity | None = None
    policy_hash: str | None = None
    decision: Decision | None = None
    rule: str | None = None
    digests: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            kind = EventKind(self.kind)
            decision = None if self.decision is None else Decision(self.decision)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "decision", decision)
        if not isinstance(self.actor, Identity) or not (
            self.subject is None or isinstance(self.subject, Identity)
        ):
            raise InvalidInput("actor and subject must be Identity values")
        if not _JURISDICTION.fullmatch(self.jurisdiction):
            raise InvalidInput(f"jurisdiction {self.jurisdiction!r} must be 2-16 uppercase letters or digits")
        if self.round_number is not None and (
            isinstance(self.round_number, bool)
            or not isinstance(self.round_number, int)
            or self.round_number < 0
        ):
            raise InvalidInput(f"round must be a non-negative integer, not {self.round_number!r}")
        if self.policy_hash is not None:
            match = _POLICY_HASH.fullmatch(self.policy_hash) if isinstance(self.policy_hash, str) else None
            if match is None:
                raise InvalidInput(
                    "policy_hash must be 'sha256:' and 64 lowercase hex digits, as policies print it"
                )
            object.__setattr__(self, "policy_hash", f"sha256:{match.group(1)}")
        allowed = _DECISIONS_BY_KIND.get(kind)
        if allowed is not None and decision not in allowed:
            raise InvalidInput(f"a {kind} event needs a decision in {[str(d) for d in allowed]}")
        if kind in _NEEDS_RULE and not self.rule:
            raise InvalidInput(f"a {kind} event must name the rule that decided")
        if self.rule is not None:
            _check_text("rule", self.rule)
        object.__setattr__(self, "digests", _frozen(self.digests, _check_digest, "digests"))
        object.__setattr__(self, "details", _frozen(self.details, _check_detail, "details"))


@dataclass(frozen=True)
class AuditRecord:
    """An event as the log wrote it: its place in the log, its time and the salts of its names."""

    sequence: int
    time: datetime.datetime
    previous: str  # hex SHA-256 leaf hash of record `sequence - 1`; GENESIS for record 0
    event: AuditEvent
    actor_salt: bytes
    subject_salt: bytes | None = None

    @classmethod
    def seal(cls, sequence: int, time: datetime.datetime, previous: str, event: AuditEvent) -> AuditRecord:
        """A record with fresh random salts."""
        subject_salt = None if event.subject is None else os.urandom(SALT_BYTES)
        return cls(sequence, time, previous, event, os.urandom(SALT_BYTES), subject_salt)

    def to_json(self) -> Json:
        """The full record, node names and salts included: what a log line holds."""
        sealed = self.sealed()
        sealed["actor"] = _open_identity(self.event.actor, self.actor_salt)
        if self.event.subject is not None and self.subject_salt is not None:
            sealed["subject"] = _open_identity(self.event.subject, self.subject_salt)
        return sealed

    def to_line(self) -> bytes:
        return canonical_json(self.to_json())

    def sealed(self) -> dict[str, Json]:
        """The record with node names replaced by commitments: what the Merkle tree hashes."""
        event = self.event
        subject = None
        if event.subject is not None and self.subject_salt is not None:
            subject = _sealed_identity(event.subject, self.subject_salt)
        return {
            "v": FORMAT_VERSION,
            "seq": self.sequence,
            "time": format_time(self.time),
            "previous": self.previous,
            "kind": str(event.kind),
            "actor": _sealed_identity(event.actor, self.actor_salt),
            "subject": subject,
            "jurisdiction": event.jurisdiction,
            "round": event.round_number,
            "policy_hash": event.policy_hash,
            "decision": None if event.decision is None else str(event.decision),
            "rule": event.rule,
            "digests": dict(event.digests),
            "details": dict(event.details),
        }

    def leaf_hash(self) -> bytes:
        return leaf_hash(canonical_json(self.sealed()))

    @classmethod
    def from_line(cls, line: bytes) -> AuditRecord:
        """Parse one log line; `MalformedRecord` says what is wrong with it."""
        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise MalformedRecord(f"not valid JSON ({error})") from None
        try:
            record = cls._from_json(value)
        except (InvalidInput, ValueError, TypeError, KeyError) as error:
            raise MalformedRecord(str(error) or type(error).__name__) from None
        if record.to_line() != line:
            raise MalformedRecord("not in canonical form (keys sorted, no spaces)")
        return record

    @classmethod
    def _from_json(cls, value: object) -> AuditRecord:
        data = _object(value, "record")
        _keys(data, "record", {*_RECORD_KEYS})
        if data["v"] != FORMAT_VERSION:
            raise MalformedRecord(f"format version {data['v']!r} is not {FORMAT_VERSION}")
        actor, actor_salt = _parse_open_identity(data["actor"], "actor")
        subject, subject_salt = (None, None)
        if data["subject"] is not None:
            subject, subject_salt = _parse_open_identity(data["subject"], "subject")
        previous = data["previous"]
        if not isinstance(previous, str) or not _SHA256_HEX.fullmatch(previous):
            raise MalformedRecord("previous must be 64 lowercase hex digits")
        sequence = data["seq"]
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise MalformedRecord("seq must be a non-negative integer")
        event = AuditEvent(
            kind=EventKind(_str(data["kind"], "kind")),
            actor=actor,
            jurisdiction=_str(data["jurisdiction"], "jurisdiction"),
            round_number=_optional_int(data["round"], "round"),
            subject=subject,
            policy_hash=_optional_str(data["policy_hash"], "policy_hash"),
            decision=None if data["decision"] is None else Decision(_str(data["decision"], "decision")),
            rule=_optional_str(data["rule"], "rule"),
            digests={k: _str(v, k) for k, v in _object(data["digests"], "digests").items()},
            details={k: _scalar(v, k) for k, v in _object(data["details"], "details").items()},
        )
        return cls(
            sequence, parse_time(_str(data["time"], "time")), previous, event, actor_salt, subject_salt
        )


_RECORD_KEYS = (
    "v",
    "seq",
    "time",
    "previous",
    "kind",
    "actor",
    "subject",
    "jurisdiction",
    "round",
    "policy_hash",
    "decision",
    "rule",
    "digests",
    "details",
)


def refusal_reason(error: JurisfedError) -> str:
    """What an audit record says about a refusal: its kind and status, never the peer-naming text.

    The full message (which names nodes) stays in the tier's round summary and logs; the
    record names the peer once, in `subject`, where export can pseudonymise it.
    """
    return f"{type(error).__name__} ({error.status.name})"


def canonical_json(value: Json) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def node_commitment(node: str, salt: bytes) -> str:
    """The hex commitment that stands for a node name in a sealed record."""
    return hashlib.sha256(_COMMITMENT_DOMAIN + salt + node.encode()).hexdigest()


def sealed_leaf_hash(sealed: Json) -> bytes:
    """The leaf hash of a sealed record as found in an evidence bundle."""
    return leaf_hash(canonical_json(sealed))


def format_time(time: datetime.datetime) -> str:
    if time.tzinfo is None:
        raise InvalidInput("audit times must carry a time zone")
    return time.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise MalformedRecord(f"time {text!r} is not of the form 2025-01-31T12:00:00.000000Z") from None


def sha256_hex(data: bytes) -> str:
    """The digest form `AuditEvent.digests` expects."""
    return hashlib.sha256(data).hexdigest()


def _sealed_identity(identity: Identity, salt: bytes) -> dict[str, Json]:
    return {
        "jurisdiction": identity.jurisdiction,
        "tier": identity.tier.value,
        "node_commitment": node_commitment(identity.node, salt),
    }


def _open_identity(identity: Identity, salt: bytes) -> dict[str, Json]:
    return {
        "jurisdiction": identity.jurisdiction,
        "tier": identity.tier.value,
        "node": identity.node,
        "salt": salt.hex(),
    }


def _parse_open_identity(value: Json, where: str) -> tuple[Identity, bytes]:
    data = _object(value, where)
    _keys(data, where, {"jurisdiction", "tier", "node", "salt"})
    salt_hex = _str(data["salt"], f"{where}.salt")
    if not re.fullmatch(rf"[0-9a-f]{{{2 * SALT_BYTES}}}", salt_hex):
        raise MalformedRecord(f"{where}.salt must be {2 * SALT_BYTES} lowercase hex digits")
    identity = Identity(
        _str(data["jurisdiction"], f"{where}.jurisdiction"),
        Tier(_str(data["tier"], f"{where}.tier")),
        _str(data["node"], f"{where}.node"),
    )
    return identity, bytes.fromhex(salt_hex)


def _frozen(
    entries: Mapping[str, object], check: Callable[[str, object], _Value], what: str
) -> Mapping[str, _Value]:
    if not isinstance(entries, Mapping):
        raise InvalidInput(f"{what} must be a mapping")
    if len(entries) > _MAX_ENTRIES:
        raise InvalidInput(f"{what} holds {len(entries)} entries; at most {_MAX_ENTRIES} (never payloads)")
    frozen: dict[str, _Value] = {}
    for key in sorted(entries):
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise InvalidInput(
                f"{what} key {key!r} must be 1-64 lowercase letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        frozen[key] = check(key, entries[key])
    return MappingProxyType(frozen)


def _check_digest(key: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InvalidInput(
            f"digest {key!r} must be 64 lowercase hex digits (SHA-256), never the payload itself"
        )
    return value


def _check_detail(key: str, value: object) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"detail {key!r} must be finite, not {value!r}")
    if isinstance(value, str):
        _check_text(f"detail {key!r}", value)
        if f"{SCHEME}://" in value:
            raise InvalidInput(f"detail {key!r} names a node; put identities in actor or subject")
        return value
    if isinstance(value, bool | int | float):
        return value
    raise InvalidInput(f"detail {key!r} must be a string, number or boolean, not {type(value).__name__}")


def _check_text(what: str, value: str) -> None:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise InvalidInput(f"{what} must be a string of at most {_MAX_TEXT} characters")


def _object(value: object, where: str) -> dict[str, Json]:
    if not isinstance(value, dict):
        raise MalformedRecord(f"{where} must be a JSON object")
    return value


def _keys(data: dict[str, Json], where: str, expected: set[str]) -> None:
    if set(data) != expected:
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
        raise MalformedRecord(f"{where} has missing keys {missing} or unknown keys {extra}")


def _str(value: Json, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedRecord(f"{where} must be a string")
    return value


def _optional_str(value: Json, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _optional_int(value: Json, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRecord(f"{where} must be an integer or null")
    return value


def _scalar(value: Json, where: str) -> Scalar:
    if isinstance(value, str | int | float | bool):
        return value
    raise MalformedRecord(f"detail {where!r} must be a string, number or boolean")
