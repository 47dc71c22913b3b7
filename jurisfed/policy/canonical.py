"""The canonical form of a policy: what is hashed and signed, whatever the file's layout.

Canonical JSON (UTF-8, keys sorted, no spaces) of every key of the file except `approvals`.
Numbers are written the same whichever way the file spells them (3, 3.0 and 3e0 are all 3),
so re-indenting, reordering keys or re-quoting a file changes neither its hash nor its
signatures; changing any value, description included, changes both. Comments (# ...) are not
part of a policy: anything a reviewer must rely on belongs in a description.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

APPROVALS_KEY = "approvals"

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


def canonical_json(value: JsonValue) -> bytes:
    """Canonical JSON bytes of `value`; ValueError for numbers JSON cannot hold (NaN, infinity)."""
    return json.dumps(
        _normalized(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def policy_body(document: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """The part of a policy document that is hashed and signed: all of it but the approvals."""
    return {key: value for key, value in document.items() if key != APPROVALS_KEY}


def sha256_of(canonical: bytes) -> str:
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _normalized(value: JsonValue) -> JsonValue:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    return {key: _normalized(item) for key, item in value.items()}
