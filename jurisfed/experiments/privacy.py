"""`jurisfed experiment privacy`: accuracy against epsilon, and a jurisdiction stopped by its cap.

Central DP at each regional, before anything crosses the border: `dp_gaussian` clips every silo
update to L2 norm CLIP, sums, adds Gaussian noise of stddev z * CLIP and divides by the cohort
(one optional `dp_adaptive` arm lets the clip follow the median norm). Every release is recorded
in the regional's PrivacyLedger (SQLite, reopened every round as a restarted regional would)
as the rule's own dp_accounting event; epsilon at delta 1e-5 is the ledger's RDP figure. All
silos take part every round (sampling rate 1: no amplification by sampling is claimed).

DP noise on a mean of n updates has stddev z * CLIP / n per coordinate, so it needs many silos:
digits allows 12 per jurisdiction (each silo keeps >= 30 examples), at alpha = 1.

The capped arm gives one jurisdiction an epsilon cap equal to the epsilon of half the rounds'
releases (computed by the same accountant) plus 1 %, so it must stop mid-run: before each round
its regional asks the ledger `would_exceed`, and refuses the round, with the ledger's figures,
as soon as one more release would pass the cap; the global goes on with the others.
"""

from __future__ import annotations

import itertools
import math

from jurisfed.experiments.federation import FederationRun, FederationSettings
from jurisfed.experiments.report import Figure, Report, Section, Table
from jurisfed.experiments.runs import ExperimentPlan, mean, points, run, stdev
from jurisfed.experiments.svg import Series, line_chart
from jurisfed.experiments.tasks import digits_task
from jurisfed.privacy.accounting import DEFAULT_DELTA, epsilon, gaussian_event

JURISDICTIONS = ("EU", "IN", "US")
CAPPED = "IN"
SILOS_PER_JURISDICTION = 12
QUICK_SILOS_PER_JURISDICTION = 6  # dp_adaptive needs 2 * 0.05 * clients above its noise
ALPHA = 1.0
CLIP = 2.0
NOISE_MULTIPLIERS = (0.1, 0.3, 0.5, 1.0)
QUICK_NOISE_MULTIPLIERS = (0.3, 1.0)
CAPPED_NOISE = 1.0
ADAPTIVE_NOISE = 0.5


def _arms(silos: int, noises: tuple[float, ...]) -> dict[str, str]:
    """Label -> regional rule."""
    arms = {"no DP (mean)": "mean"}
    for z in noises:
        arms[f"dp_gaussian z={z:g}"] = f"dp_gaussian(noise_multiplier={z}, clip={CLIP}, clients={silos})"
    arms[f"dp_adaptive z={ADAPTIVE_NOISE:g}"] = (
        f"dp_adaptive(noise_multiplier={ADAPTIVE_NOISE}, clients={silos}, initial_clip={CLIP})"
    )
    return arms


def run_privacy(plan: ExperimentPlan) -> Report:
    silos = QUICK_SILOS_PER_JURISDICTION if plan.quick else SILOS_PER_JURISDICTION
    noises = QUICK_NOISE_MULTIPLIERS if plan.quick else NOISE_MULTIPLIERS
    arms = _arms(silos, noises)
    cap = _cap(plan.rounds)
    capped_label = f"dp_gaussian z={CAPPED_NOISE:g}, {CAPPED} capped at epsilon {cap:.3g}"
    capped_rule = f"dp_gaussian(noise_multiplier={CAPPED_NOISE}, clip={CLIP}, clients={silos})"
    runs: dict[str, list[FederationRun]] = {label: [] for label in [*arms, capped_label]}
    for seed in plan.seeds:
        task = digits_task(
            plan.workdir, jurisdictions=JURISDICTIONS, silos_per_jurisdiction=silos, alpha=ALPHA, seed=seed
        )
        for label, rule in arms.items():
            runs[label].append(
                run(plan, task, FederationSettings(regional_rule=rule), seed=seed, label=label)
            )
        capped = FederationSettings(regional_rule=capped_rule, epsilon_caps=((CAPPED, cap),))
        runs[capped_label].append(run(plan, task, capped, seed=seed, label=capped_label))
    return _report(plan, silos, arms, runs, capped_label, cap)


def _cap(rounds: int) -> float:
    """Epsilon of ceil(rounds / 2) releases at CAPPED_NOISE, plus 1 %: the cap falls mid-run."""
    releases = [gaussian_event(CAPPED_NOISE)] * math.ceil(rounds / 2)
    return 1.01 * epsilon(releases, DEFAULT_DELTA)


def _epsilon_text(value: float | None) -> str:
    if value is None:
        return "inf (no DP)"
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _report(
    plan: ExperimentPlan,
    silos: int,
    arms: dict[str, str],
    runs: dict[str, list[FederationRun]],
    capped_label: str,
    cap: float,
) -> Report:
    rows = []
    series_points: list[tuple[str, float, float]] = []
    results: dict[str, object] = {}
    for label, rule in arms.items():
        finals = [r.records[-1].global_accuracy for r in runs[label]]
        spent = runs[label][0].records[-1].jurisdictions[0].epsilon_spent
        per_round = [j.epsilon_spent for j in (rec.jurisdictions[0] for rec in runs[label][0].records)]
        rows.append((label, rule, _epsilon_text(spent), points(mean(finals)), f"{100 * stdev(finals):.1f}"))
        if spent is not None and math.isfinite(spent):
            series_points.append((label, spent, 100 * mean(finals)))
        results[label] = {
            "rule": rule,
            "epsilon_after_each_round": per_round,
            "final_accuracy_per_seed": finals,
            "accuracy_per_round": _curve(runs[label]),
        }
    cap_rows = []
    first = runs[capped_label][0]
    for record in first.records:
        cells = [str(record.number)]
        for j in record.jurisdictions:
            cells.append(_epsilon_text(j.epsilon_spent))
        capped = next(j for j in record.jurisdictions if j.jurisdiction == CAPPED)
        cells.append(capped.refusal or "contributed")
        cells.append(points(record.global_accuracy))
        cap_rows.append(tuple(cells))
    contributed = [
        not next(j for j in r.jurisdictions if j.jurisdiction == CAPPED).refusal for r in first.records
    ]
    stop_round = next((r.number for r, ok in zip(first.records, contributed, strict=True) if not ok), None)
    epsilon_per_round = {
        name: [j.epsilon_spent for r in first.records for j in r.jurisdictions if j.jurisdiction == name]
        for name in JURISDICTIONS
    }
    spent_so_far = [[e for e in values if e is not None] for values in epsilon_per_round.values()]
    monotone = all(all(b >= a for a, b in itertools.pairwise(e)) for e in spent_so_far)
    results[capped_label] = {
        "cap_epsilon": cap,
        "stopped_at_round": stop_round,
        "epsilon_per_round": epsilon_per_round,
        "refusals": [
            next(x for x in r.jurisdictions if x.jurisdiction == CAPPED).refusal for r in first.records
        ],
    }
    finite = sorted(series_points, key=lambda item: item[1])
    figures = (
        Figure(
            "Final global accuracy against epsilon (delta 1e-5, from the ledger), one point per "
            "noise multiplier",
            line_chart(
                "Accuracy vs epsilon",
                [Series(label, (eps,), (acc,)) for label, eps, acc in finite],
                x_label="epsilon after the last round (log)",
                y_label="accuracy (%)",
                log_x=True,
                markers_only=True,
            ),
        ),
        Figure(
            "Global accuracy per round",
            line_chart(
                "Accuracy per round",
                [
                    Series(
                        label,
                        tuple(float(i + 1) for i in range(plan.rounds)),
                        tuple(100 * a for a in _curve(runs[label])),
                    )
                    for label in arms
                ],
                x_label="round",
                y_label="accuracy (%)",
            ),
        ),
    )
    return Report(
        title="Privacy: central DP at the regional, accounted by the ledger",
        header=plan.header(
            f"Digits, {len(JURISDICTIONS)} jurisdictions x {silos} silos, Dirichlet alpha={ALPHA}; model "
            f"{'mlp-64-256-128-10'}; DP at each regional with clip {CLIP} (about the median norm of a silo "
            f"update in round 1) and the cohort of {silos} silos, all silos every round (no sampling); "
            "epsilon at delta 1e-5 by the ledger's RDP accountant."
        ),
        sections=(
            Section(
                "Accuracy against epsilon",
                paragraphs=(
                    "Epsilon is the same for every jurisdiction (same rule, same rounds); it is read from "
                    "the first seed's ledger of the first jurisdiction. 'inf' means the release "
                    "is not private.",
                ),
                tables=(
                    Table(
                        "Final global accuracy (%) and epsilon after the last round",
                        ("arm", "regional rule", "epsilon (delta 1e-5)", "accuracy", "std over seeds"),
                        tuple(rows),
                    ),
                ),
                figures=figures,
            ),
            Section(
                f"A capped jurisdiction: {CAPPED} with epsilon cap {cap:.3g}",
                paragraphs=(
                    f"{CAPPED}'s cap is the epsilon of {math.ceil(plan.rounds / 2)} releases at "
                    f"z={CAPPED_NOISE:g} "
                    "plus 1 %. Before each round its regional asks the ledger would_exceed(); the round "
                    "in which one more release would pass the cap is refused. Stopped at round: "
                    f"{stop_round}. "
                    f"Epsilon never decreases from round to round: {monotone} (the ledger is "
                    "reopened from its "
                    "SQLite file every round, as a restarted regional would, and keeps counting).",
                ),
                tables=(
                    Table(
                        f"Seed {plan.seeds[0]}: epsilon spent per jurisdiction after each round",
                        ("round", *JURISDICTIONS, f"{CAPPED} status", "global accuracy"),
                        tuple(cap_rows),
                    ),
                ),
            ),
        ),
        results={"runs": results, "seeds": list(plan.seeds), "rounds": plan.rounds, "delta": DEFAULT_DELTA},
    )


def _curve(runs: list[FederationRun]) -> list[float]:
    return [mean([r.records[i].global_accuracy for r in runs]) for i in range(len(runs[0].records))]
