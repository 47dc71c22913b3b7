"""Dry runs: which rule of which policy decides each flow, and what would be refused.

A flow crosses the policies of every jurisdiction it starts or ends in (the source's on the
way out, the destination's on the way in); it may happen only when each of them allows it.
A flow no given policy concerns is refused, as every tier refuses what its policy does not
name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jurisfed.policy.engine import concerns, decide
from jurisfed.policy.errors import PolicyError
from jurisfed.policy.flows import NamedFlow, flow_from_record
from jurisfed.policy.model import Decision, Policy

__all__ = ["Outcome", "read_flows", "render_outcomes", "simulate"]


@dataclass(frozen=True)
class Outcome:
    named: NamedFlow
    decisions: tuple[Decision, ...]

    @property
    def allowed(self) -> bool:
        return bool(self.decisions) and all(d.allowed for d in self.decisions)


def simulate(policies: Sequence[Policy], flows: Sequence[NamedFlow]) -> list[Outcome]:
    return [
        Outcome(named, tuple(decide(p, named.flow) for p in policies if concerns(p, named.flow)))
        for named in flows
    ]


def read_flows(path: Path) -> list[NamedFlow]:
    """Flows from a YAML file: a list of flow records, or a mapping with a `flows:` list."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PolicyError(f"cannot read flows file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise PolicyError(f"flows file {path} is not valid YAML: {error}") from error
    records = raw.get("flows") if isinstance(raw, dict) else raw
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise PolicyError(f"flows file {path} must hold a list of flows (or flows: [...])")
    return [flow_from_record(record, f"{path}: flows[{i}]") for i, record in enumerate(records)]


def render_outcomes(outcomes: Sequence[Outcome]) -> str:
    lines: list[str] = []
    for outcome in outcomes:
        verdict = "ALLOWED" if outcome.allowed else "REFUSED"
        lines.append(f"{verdict}  {outcome.named.name}")
        if not outcome.decisions:
            lines.append("    no policy given concerns this flow: refused by default")
        for d in outcome.decisions:
            mark = "allows" if d.allowed else "refuses"
            lines.append(f"    {d.policy_id} v{d.policy_version} {mark} by rule {d.rule_id}: {d.reason}")
    refused = sum(not o.allowed for o in outcomes)
    lines += ["", f"{len(outcomes) - refused} of {len(outcomes)} flow(s) allowed, {refused} refused."]
    return "\n".join(lines) + "\n"
