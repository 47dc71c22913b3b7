"""Fixtures for the audit tests: a signing key and a small closed log of a few rounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from audit_samples import EU_REGIONAL, round_events
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.keys import create_signing_key
from jurisfed.audit.log import AuditLog


@pytest.fixture
def signing_key(tmp_path: Path) -> Ed25519PrivateKey:
    return create_signing_key(tmp_path / "keys" / "audit.key")


@pytest.fixture
def write_log(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Callable[..., Path]:
    """Write a closed log of `rounds` rounds (6 events each) and return its path."""

    def write(rounds: int = 3, name: str = "regional.audit.jsonl", every: int = 4) -> Path:
        path = tmp_path / "audit" / name
        with AuditLog.open(path, EU_REGIONAL, signing_key, checkpoint_every=every) as log:
            for round_number in range(1, rounds + 1):
                for event in round_events(round_number):
                    log.record(event)
                log.checkpoint()
        return path

    return write
