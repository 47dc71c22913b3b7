"""`jurisfed experiment communication`: bytes per hop and accuracy for each regional -> global codec.

The codec under test is the regional -> global hop's, the one that crosses the border; the
silo -> regional hop stays raw (its bytes are reported too). Every variant runs the same tasks
with the same seeds and rounds as the raw run:

  raw                     float32 as it is
  int8                    stochastic int8, one scale per tensor (unbiased; no residual needed)
  top-k-int8 + EF         the DENSITY largest values, int8 in blocks, residual kept at the regional
  top-k-int8, no EF       the same without the residual: what top-k drops is lost
  top-k + EF              the DENSITY largest values as float32, with the residual

Bytes are the serialized AggregateMessage / UpdateMessage streams (signed header and chunk
framing included) plus gRPC's 5-byte framing per message, per round; the compression ratio is
raw bytes / codec bytes of the same hop.
"""

from __future__ import annotations

from jurisfed.compression.codec import Codec
from jurisfed.experiments.federation import FederationRun, FederationSettings
from jurisfed.experiments.hops import HopCodec
from jurisfed.experiments.report import Figure, Report, Section, Table
from jurisfed.experiments.runs import ExperimentPlan, mean, points, run, verdict
from jurisfed.experiments.svg import Series, bar_chart, line_chart
from jurisfed.experiments.tasks import SYNTHETIC_MLP, TaskChoice

JURISDICTIONS = ("EU", "IN", "US")
DIGITS_SILOS = 3
SYNTHETIC_SILOS = 5
DENSITY = 0.01
VARIANTS = {
    "raw": HopCodec(),
    "int8": HopCodec(Codec.named("int8")),
    "top-k-int8 + EF": HopCodec(Codec.named("top-k-int8", density=DENSITY), error_feedback=True),
    "top-k-int8, no EF": HopCodec(Codec.named("top-k-int8", density=DENSITY), error_feedback=False),
    "top-k + EF": HopCodec(Codec.named("top-k", density=DENSITY), error_feedback=True),
}
# Issue 8: (minimum ratio regional -> global, largest accuracy loss in points) per variant.
TARGETS = {"int8": (3.9, 0.5), "top-k-int8 + EF": (50.0, 1.0)}


TASKS = (
    TaskChoice("digits alpha=0.1", 0.1, None, JURISDICTIONS, DIGITS_SILOS),
    TaskChoice("digits alpha=5", 5.0, None, JURISDICTIONS, DIGITS_SILOS),
    TaskChoice("Synthetic(1, 1)", 1.0, 1.0, JURISDICTIONS, SYNTHETIC_SILOS, SYNTHETIC_MLP),
)


def run_communication(plan: ExperimentPlan) -> Report:
    tasks = TASKS[:1] if plan.quick else TASKS
    runs: dict[tuple[str, str], list[FederationRun]] = {}
    for maker in tasks:
        for seed in plan.seeds:
            task = maker.make(plan.workdir, seed)
            for variant, hop in VARIANTS.items():
                settings = FederationSettings(regional_hop=hop)
                label = f"{maker.name} | {variant}"
                runs.setdefault((maker.name, variant), []).append(
                    run(plan, task, settings, seed=seed, label=label)
                )
    return _report(plan, tasks, runs)


def _per_round_bytes(runs: list[FederationRun]) -> tuple[float, float]:
    """Mean bytes per round and jurisdiction: all its silos' update streams, its aggregate stream."""
    silo = [j.silo_bytes for r in runs for rec in r.records for j in rec.jurisdictions]
    regional = [j.regional_bytes for r in runs for rec in r.records for j in rec.jurisdictions]
    return mean([float(b) for b in silo]), mean([float(b) for b in regional])


def _report(
    plan: ExperimentPlan, tasks: tuple[TaskChoice, ...], runs: dict[tuple[str, str], list[FederationRun]]
) -> Report:
    sections = []
    results: dict[str, object] = {}
    for maker in tasks:
        raw_silo, raw_regional = _per_round_bytes(runs[(maker.name, "raw")])
        raw_accuracy = mean([r.records[-1].global_accuracy for r in runs[(maker.name, "raw")]])
        rows, ratios, accuracies, verdicts = [], [], [], []
        task_results: dict[str, object] = {}
        for variant, hop in VARIANTS.items():
            variant_runs = runs[(maker.name, variant)]
            silo_bytes, regional_bytes = _per_round_bytes(variant_runs)
            accuracy = mean([r.records[-1].global_accuracy for r in variant_runs])
            ratio = raw_regional / regional_bytes
            loss = 100 * (raw_accuracy - accuracy)
            ratios.append(ratio)
            accuracies.append(100 * accuracy)
            rows.append(
                (
                    variant,
                    hop.label,
                    f"{silo_bytes:,.0f}",
                    f"{regional_bytes:,.0f}",
                    f"{ratio:.2f}x",
                    points(accuracy),
                    f"{-loss:+.1f}",
                )
            )
            if variant in TARGETS:
                least_ratio, most_loss = TARGETS[variant]
                met = ratio >= least_ratio and loss <= most_loss
                verdicts.append(
                    f"Target (issue 8), {variant}: >= {least_ratio:g}x regional -> global with <= "
                    f"{most_loss:g} "
                    f"point loss: {ratio:.2f}x, {loss:+.2f} points lost -> {verdict(met)}."
                )
            task_results[variant] = {
                "codec": hop.label,
                "silo_to_regional_bytes_per_round_all_silos_of_a_jurisdiction": silo_bytes,
                "regional_to_global_bytes_per_round_per_jurisdiction": regional_bytes,
                "ratio_vs_raw_regional_to_global": ratio,
                "final_accuracy_per_seed": [r.records[-1].global_accuracy for r in variant_runs],
                "accuracy_per_round": [
                    mean([r.records[i].global_accuracy for r in variant_runs]) for i in range(plan.rounds)
                ],
            }
        with_ef = mean([r.records[-1].global_accuracy for r in runs[(maker.name, "top-k-int8 + EF")]])
        without_ef = mean([r.records[-1].global_accuracy for r in runs[(maker.name, "top-k-int8, no EF")]])
        verdicts.append(
            f"Without error feedback the loss is larger: top-k-int8 {points(with_ef)} % with EF, "
            f"{points(without_ef)} % without -> {verdict(without_ef < with_ef)}."
        )
        results[maker.name] = task_results
        sections.append(
            _section(plan, maker, tuple(rows), tuple(verdicts), ratios, accuracies, runs, raw_silo)
        )
    return Report(
        title="Communication: codecs on the regional -> global hop",
        header=plan.header(
            f"Tasks: digits (3 jurisdictions x {DIGITS_SILOS} silos, Dirichlet alpha 0.1 and 5, "
            "mlp-64-256-128-10, "
            f"5 local epochs) and Synthetic(1, 1) (3 jurisdictions x {SYNTHETIC_SILOS} silos of "
            "200 examples, "
            f"{SYNTHETIC_MLP.name}, 2 local epochs; with the 610-parameter logistic regression of the paper, "
            "the signed header and chunk framing, a fixed cost per stream, would dominate the bytes: "
            "measured on seed 0 with a 4.5k-parameter model, int8 reached 3.84x and top-k-int8 "
            f"36x). Top-k density {DENSITY:g} (int8 values in blocks of 256). The codec "
            "applies to the regional -> global hop; silos send raw float32 to their regional."
        ),
        sections=tuple(sections),
        results={"tasks": results, "seeds": list(plan.seeds), "rounds": plan.rounds, "density": DENSITY},
    )


def _section(
    plan: ExperimentPlan,
    maker: TaskChoice,
    rows: tuple[tuple[str, ...], ...],
    verdicts: tuple[str, ...],
    ratios: list[float],
    accuracies: list[float],
    runs: dict[tuple[str, str], list[FederationRun]],
    raw_silo: float,
) -> Section:
    names = list(VARIANTS)
    curves = [
        Series(
            variant,
            tuple(float(i + 1) for i in range(plan.rounds)),
            tuple(
                100 * mean([r.records[i].global_accuracy for r in runs[(maker.name, variant)]])
                for i in range(plan.rounds)
            ),
            dashed="no EF" in variant,
        )
        for variant in names
    ]
    regional_bytes = [_per_round_bytes(runs[(maker.name, v)])[1] for v in names]
    return Section(
        maker.name,
        paragraphs=verdicts,
        tables=(
            Table(
                f"{maker.name}: bytes per round and final global accuracy",
                (
                    "variant",
                    "regional -> global codec",
                    "silo -> regional bytes (all silos of a jurisdiction)",
                    "regional -> global bytes",
                    "ratio vs raw",
                    "accuracy (%)",
                    "vs raw (points)",
                ),
                rows,
            ),
        ),
        figures=(
            Figure(
                f"{maker.name}: final accuracy against compression ratio of the regional -> global hop",
                line_chart(
                    "Accuracy vs compression ratio",
                    [Series(n, (r,), (a,)) for n, r, a in zip(names, ratios, accuracies, strict=True)],
                    x_label="compression ratio vs raw (log)",
                    y_label="accuracy (%)",
                    log_x=True,
                    markers_only=True,
                ),
            ),
            Figure(
                f"{maker.name}: bytes per round per hop (log scale); silo -> regional is raw in "
                "every variant",
                bar_chart(
                    "Bytes per round",
                    ["silo -> regional (raw)", *(f"regional -> global {n}" for n in names)],
                    [raw_silo, *regional_bytes],
                    y_label="bytes (log)",
                    log_y=True,
                ),
            ),
            Figure(
                f"{maker.name}: global accuracy per round (dashed: without error feedback)",
                line_chart("Accuracy per round", curves, x_label="round", y_label="accuracy (%)"),
            ),
        ),
    )
