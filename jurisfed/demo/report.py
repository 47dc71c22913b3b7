"""The demo's results: one row per round, printed as a table and written as results.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RoundResult:
    round: int
    outcome: str
    jurisdictions: tuple[str, ...]
    global_accuracy: float
    global_accuracy_by_jurisdiction: dict[str, float]
    # None when the jurisdiction committed no personalized model in this round.
    personalized_accuracy: dict[str, float | None]
    silo_to_regional_bytes: int
    silo_to_regional_float32_bytes: int
    regional_to_global_bytes: int
    regional_to_global_float32_bytes: int
    wall_time_s: float

    def progress_line(self, total_rounds: int) -> str:
        personal = ", ".join(f"{j} {_pct(a)}" for j, a in self.personalized_accuracy.items())
        return (
            f"round {self.round}/{total_rounds} {self.outcome} in {self.wall_time_s:.1f} s: "
            f"global accuracy {_pct(self.global_accuracy)}; personalized {personal}"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "round": self.round,
            "outcome": self.outcome,
            "jurisdictions": list(self.jurisdictions),
            "global_accuracy": self.global_accuracy,
            "global_accuracy_by_jurisdiction": self.global_accuracy_by_jurisdiction,
            "personalized_accuracy": self.personalized_accuracy,
            "bytes": {
                "silo_to_regional": {
                    "sent": self.silo_to_regional_bytes,
                    "float32_equivalent": self.silo_to_regional_float32_bytes,
                },
                "regional_to_global": {
                    "sent": self.regional_to_global_bytes,
                    "float32_equivalent": self.regional_to_global_float32_bytes,
                },
            },
            "wall_time_s": self.wall_time_s,
        }


@dataclass
class DemoResults:
    planned_rounds: int
    jurisdictions: tuple[str, ...]
    rounds: list[RoundResult] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table: one line per round, accuracies as percentages."""
        headers = ["round", "global"]
        headers += [f"glob@{j}" for j in self.jurisdictions] + [f"pers@{j}" for j in self.jurisdictions]
        headers += ["silo->reg", "reg->glob", "reg->glob f32", "wall s"]
        rows = [headers]
        for r in self.rounds:
            row = [str(r.round), _pct(r.global_accuracy)]
            row += [_pct(r.global_accuracy_by_jurisdiction.get(j)) for j in self.jurisdictions]
            row += [_pct(r.personalized_accuracy.get(j)) for j in self.jurisdictions]
            row += [
                _size(r.silo_to_regional_bytes),
                _size(r.regional_to_global_bytes),
                _size(r.regional_to_global_float32_bytes),
                f"{r.wall_time_s:.1f}",
            ]
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
        return "\n".join(
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        )

    def write_json(self, path: Path) -> None:
        document = {
            "planned_rounds": self.planned_rounds,
            "jurisdictions": list(self.jurisdictions),
            "rounds": [r.as_json() for r in self.rounds],
        }
        path.write_text(json.dumps(document, indent=2) + "\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _size(count: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
