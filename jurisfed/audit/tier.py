"""Opening an aggregating tier's own audit log, with a signing key made on first start."""

from __future__ import annotations

from pathlib import Path

from jurisfed.audit.keys import create_signing_key, load_signing_key
from jurisfed.audit.log import AuditLog
from jurisfed.auth.identity import Identity

LOG_NAME = "audit.log.jsonl"
KEY_NAME = "audit.key"


def open_tier_log(state_dir: Path, identity: Identity, key_path: Path | None) -> AuditLog:
    """The tier's log in `state_dir`; its key at `key_path`, or one made in `state_dir` on first start.

    Refuses (AuditIntegrityError, ConfigError) to open a log that does not verify or belongs to
    another node: a tier never appends to evidence it cannot vouch for.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if key_path is None:
        key_path = state_dir / KEY_NAME
        key = load_signing_key(key_path) if key_path.exists() else create_signing_key(key_path)
    else:
        key = load_signing_key(key_path)
    return AuditLog.open(state_dir / LOG_NAME, identity, key)
