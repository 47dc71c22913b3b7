"""Policy files: YAML in, a checked `Policy` out.

`load_policy(path, trusted_keys)` is what a tier calls at start-up: it refuses (PolicyError)
a file that is not valid, not signed by a trusted key, tampered with, or not yet in force.
`read_policy(path)` checks the file but not its signatures: for drafts, `explain` and `diff`.

The YAML is read strictly, because legal reviewers should get what they read: `NO` is
Norway, not false; `2026-12-01` stays a date as written; `1e-5` is a number; a key given twice
or an alias (*name) is an error rather than a silent override.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from jurisfed.policy.canonical import JsonValue, canonical_json, policy_body, sha256_of
from jurisfed.policy.errors import PolicyError, PolicyInvalid
from jurisfed.policy.model import (
    RESERVED_IDS,
    Approval,
    Artifact,
    Conditions,
    EndpointScope,
    JurisdictionGroup,
    Location,
    MetadataField,
    Owner,
    Policy,
    PrivacyLimit,
    RestrictedData,
    Retention,
    Rule,
    Tier,
)
from jurisfed.policy.signing import TrustedKeys, verify_approvals

__all__ = ["load_policy", "parse_policy", "policy_schema", "read_document", "read_policy"]

_JURISDICTION = re.compile(r"[A-Z0-9]{2,16}")
FORMAT = "jurisfed-residency-policy/v1"


def load_policy(path: Path, trusted_keys: TrustedKeys, *, today: datetime.date | None = None) -> Policy:
    """The policy in `path`, valid, approved by a trusted key, unaltered since, and in force.

    Raises PolicyInvalid for a malformed file, PolicySignatureError when no trusted approval
    verifies (unsigned, tampered, or signed only by unknown keys) or any approval by a trusted
    key fails, and PolicyError when the policy takes effect after `today` (default: today, UTC).
    """
    policy = read_policy(path)
    verify_approvals(policy, trusted_keys, source=str(path))
    day = today or datetime.datetime.now(datetime.UTC).date()
    if datetime.date.fromisoformat(policy.effective_from) > day:
        raise PolicyError(
            f"policy {path} ({policy.label}) takes effect on {policy.effective_from}; it is not in force "
            f"on {day.isoformat()}"
        )
    return policy


def read_policy(path: Path) -> Policy:
    """The policy in `path`, checked against the schema and for consistency, signatures unchecked."""
    return parse_policy(_read_text(path), str(path))


def parse_policy(text: str, source: str = "<text>") -> Policy:
    document = _parse_yaml(text, source)
    return build_policy(document, source)


def read_document(path: Path) -> dict[str, JsonValue]:
    """The file as a validated mapping (what the schema describes), for tools that edit it."""
    document = _parse_yaml(_read_text(path), str(path))
    _validate(document, str(path))
    return document


def build_policy(document: Mapping[str, Any], source: str) -> Policy:
    """Validate a parsed document and turn it into a `Policy`; PolicyInvalid lists every problem."""
    _validate(document, source)
    canonical = canonical_json(policy_body(document))
    groups = tuple(
        JurisdictionGroup(name, body["description"], tuple(body["jurisdictions"]))
        for name, body in document.get("groups", {}).items()
    )
    members = {group.name: group.jurisdictions for group in groups}
    return Policy(
        id=document["policy"],
        version=document["version"],
        title=document["title"],
        jurisdiction=document["jurisdiction"],
        effective_from=document["effective_from"],
        owners=tuple(Owner(o["name"], o.get("role", ""), o.get("contact", "")) for o in document["owners"]),
        rules=tuple(_rule(raw, members) for raw in document["rules"]),
        description=document.get("description", ""),
        hosting_location=document.get("hosting_location"),
        groups=groups,
        locations=tuple(
            Location(name, body["place"], body["jurisdiction"], body.get("description", ""))
            for name, body in document.get("locations", {}).items()
        ),
        restricted_data=tuple(
            RestrictedData(r["id"], r["data_class"], r["description"], r["legal_basis"])
            for r in document.get("restricted_data", [])
        ),
        retention=tuple(
            Retention(Tier(r["tier"]), Artifact(r["artifact"]), r["days"], r.get("description", ""))
            for r in document.get("retention", [])
        ),
        approvals=tuple(Approval(**a) for a in document.get("approvals", [])),
        sha256=sha256_of(canonical),
        canonical=canonical,
    )


@functools.cache
def policy_schema() -> dict[str, Any]:
    """The published JSON Schema of policy files (jurisfed/policy/schema.json)."""
    text = resources.files("jurisfed.policy").joinpath("schema.json").read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


# --- building -------------------------------------------------------------------------------


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _scope(raw: Mapping[str, Any], members: Mapping[str, tuple[str, ...]]) -> EndpointScope:
    written = tuple(_listed(raw["jurisdiction"]))
    codes = frozenset(code for ref in written for code in members.get(ref, (ref,)))
    return EndpointScope(tuple(Tier(t) for t in _listed(raw["tier"])), written, codes)


def _rule(raw: Mapping[str, Any], members: Mapping[str, tuple[str, ...]]) -> Rule:
    c = raw.get("conditions", {})
    dp = c.get("differential_privacy")
    conditions = Conditions(
        min_cohort_silos=c.get("min_cohort_silos"),
        differential_privacy=(
            PrivacyLimit(float(dp["max_epsilon"]), float(dp["max_delta"]), dp["period_days"]) if dp else None
        ),
        compression_required=c.get("compression_required", False),
        layers_stay_local=tuple(c.get("layers_stay_local", ())),
        strip_metadata=tuple(MetadataField(f) for f in c.get("strip_metadata", ())),
        hosted_in=tuple(c.get("hosted_in", ())),
    )
    return Rule(
        id=raw["id"],
        description=raw["description"],
        legal_basis=raw["legal_basis"],
        artifacts=tuple(Artifact(a) for a in _listed(raw["artifact"])),
        source=_scope(raw["from"], members),
        destination=_scope(raw["to"], members),
        conditions=conditions,
    )


# --- validation -----------------------------------------------------------------------------


def _validate(document: Mapping[str, Any], source: str) -> None:
    if document.get("format") != FORMAT:
        found = document.get("format")
        raise PolicyInvalid(
            source,
            [f"this is not a jurisfed policy file: it must start with format: {FORMAT} (found {found!r})"],
        )
    errors = sorted(_validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_explain_schema_error(error) for error in errors]
    if not problems:
        problems = _consistency_problems(document)
    if problems:
        raise PolicyInvalid(source, problems)


@functools.cache
def _validator() -> Any:
    import jsonschema  # type: ignore[import-untyped]  # noqa: PLC0415 - slow to import; only loading needs it

    return jsonschema.Draft202012Validator(policy_schema())


def _where(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the file"


def _explain_schema_error(error: Any) -> str:
    where = _where(error.absolute_path)
    last = next((p for p in reversed(list(error.absolute_path)) if isinstance(p, str)), "")
    value = error.instance
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}"
    if error.validator == "required":
        return f"{where}: {error.message.replace('is a required property', 'is required')}"
    if last == "artifact" and value == Artifact.RAW_DATA.value:
        return f"{where}: raw data never moves; no rule may allow raw_data"
    if last == "artifact" and isinstance(value, str):
        return f"{where}: {value!r} is not an artifact; use one of {_choices('movableArtifact')}"
    if last == "tier" and isinstance(value, str):
        return f"{where}: {value!r} is not a tier; use one of {_choices('tier')}"
    if last == "jurisdiction" and isinstance(value, str):
        return (
            f"{where}: {value!r} is neither a jurisdiction code (2-16 upper-case letters or digits, "
            "e.g. EU) nor a group name (lower-case letters, digits and hyphens, e.g. eu-eea)"
        )
    if error.validator == "pattern" and error.schema.get("pattern") == _name_pattern():
        return f"{where}: {value!r} must be lower-case letters, digits and hyphens, starting with a letter"
    if error.validator in ("anyOf", "oneOf") and error.context:
        import jsonschema  # noqa: PLC0415 - already imported by _validate

        return _explain_schema_error(jsonschema.exceptions.best_match(error.context))
    return f"{where}: {error.message}"


def _choices(definition: str) -> str:
    return ", ".join(policy_schema()["$defs"][definition]["enum"])


def _name_pattern() -> str:
    return cast(str, policy_schema()["$defs"]["name"]["pattern"])


def _consistency_problems(document: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say: references resolve, ids are unique, dates are dates."""
    problems: list[str] = []
    try:
        datetime.date.fromisoformat(document["effective_from"])
    except ValueError:
        problems.append(f"effective_from: {document['effective_from']!r} is not a date (YYYY-MM-DD)")
    groups: Mapping[str, Any] = document.get("groups", {})
    locations: Mapping[str, Any] = document.get("locations", {})
    for name in sorted(set(groups) & set(locations)):
        problems.append(f"groups.{name}: {name!r} names both a group and a location; use distinct names")
    hosting = document.get("hosting_location")
    if hosting is not None and hosting not in locations:
        problems.append(f"hosting_location: {hosting!r} is not one of the locations ({_names(locations)})")

    ids: dict[str, str] = {}

    def claim(identifier: str, where: str) -> None:
        if identifier in RESERVED_IDS:
            problems.append(f"{where}: {identifier!r} is reserved for decisions no rule makes")
        elif identifier in ids:
            problems.append(f"{where}: id {identifier!r} is already used by {ids[identifier]}")
        else:
            ids[identifier] = where

    data_classes: set[str] = set()
    for index, restriction in enumerate(document.get("restricted_data", [])):
        claim(restriction["id"], f"restricted_data[{index}].id")
        if restriction["data_class"] in data_classes:
            problems.append(
                f"restricted_data[{index}]: data class {restriction['data_class']!r} is listed twice"
            )
        data_classes.add(restriction["data_class"])
    for index, rule in enumerate(document["rules"]):
        where = f"rules[{index}]"
        claim(rule["id"], f"{where}.id")
        for end in ("from", "to"):
            for ref in _listed(rule[end]["jurisdiction"]):
                if not _JURISDICTION.fullmatch(ref) and ref not in groups:
                    problems.append(
                        f"{where}.{end}.jurisdiction: {ref!r} is not a jurisdiction code or a group of this "
                        f"policy (groups: {_names(groups)})"
                    )
        for name in rule.get("conditions", {}).get("hosted_in", []):
            if name not in locations:
                problems.append(
                    f"{where}.conditions.hosted_in: {name!r} is not one of the locations "
                    f"({_names(locations)})"
                )
    return problems + _duplicates_and_numbers(document)


def _duplicates_and_numbers(document: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for index, retention in enumerate(document.get("retention", [])):
        key = (retention["tier"], retention["artifact"])
        if key in seen:
            problems.append(f"retention[{index}]: {key[1]} kept by {key[0]} is given a period twice")
        seen.add(key)
    keys = [approval["key_id"] for approval in document.get("approvals", [])]
    problems += [
        f"approvals: key {key} approved twice" for key in sorted({k for k in keys if keys.count(k) > 1})
    ]
    problems += [f"{where}: {value!r} is not a finite number" for where, value in _non_finite(document, ())]
    return problems


def _names(mapping: Mapping[str, Any]) -> str:
    return ", ".join(sorted(mapping)) or "none defined"


def _non_finite(value: Any, path: tuple[str | int, ...]) -> Iterable[tuple[str, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield _where(path), value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))


# --- YAML -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"cannot read policy file {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise PolicyError(f"policy file {path} is not UTF-8 text: {error}") from error


class _StrictLoader(yaml.SafeLoader):
    """YAML 1.2 core scalars (true/false only, no sexagesimal or dates), no duplicate keys, no aliases."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "aliases (*name) are not allowed in a policy file; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in the same mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] in ("null", "str")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader with stricter scalars
    except yaml.YAMLError as error:
        raise PolicyInvalid(source, [f"not valid YAML: {error}"]) from error
    if not isinstance(document, dict):
        raise PolicyInvalid(
            source, ["the file must hold a mapping of keys to values (format:, policy:, ...)"]
        )
    return document
