"""Cost of residency policy decisions, and of loading a signed policy at start-up.

Prints, for the committed example policies (deploy/policies):
  - µs per `decide` call and decisions per second (best of --repeats runs of --decisions calls)
    for typical flows: an EU aggregate leaving for the global (every condition evaluated), a
    flow no rule names (default deny), one refused by a condition, a silo update, raw data;
  - ms to `load_policy` (YAML, schema, canonical form, Ed25519 verification);
  - ms to import jurisfed.policy in a fresh interpreter, and whether TensorFlow came with it.
No assertions: the numbers are for people (the issue asks for well under a millisecond).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from timing import best_seconds  # bench/ is on sys.path

from jurisfed.policy import decide, load_policy, load_trusted_keys
from jurisfed.policy.model import Artifact, Endpoint, Flow, MetadataField, PrivacySpend, Tier

POLICIES = Path(__file__).resolve().parent.parent / "deploy" / "policies"

EU_SILO = Endpoint(Tier.SILO, "EU")
EU_REGIONAL = Endpoint(Tier.REGIONAL, "EU", "eu-frankfurt")
GLOBAL = Endpoint(Tier.GLOBAL, "GLOBAL", "ch-zurich")
LAYERS = frozenset({"hidden_1/kernel", "hidden_1/bias", "hidden_2/kernel", "hidden_2/bias"})

FLOWS = {
    "EU aggregate -> global, allowed (all 6 conditions checked)": Flow(
        Artifact.AGGREGATE,
        EU_REGIONAL,
        GLOBAL,
        cohort_silos=6,
        privacy=PrivacySpend(2.5, 1e-6, 90),
        compressed=True,
        layers=LAYERS,
        metadata_fields=frozenset(),
    ),
    "EU aggregate -> global, refused: head layer present": Flow(
        Artifact.AGGREGATE,
        EU_REGIONAL,
        GLOBAL,
        cohort_silos=6,
        privacy=PrivacySpend(2.5, 1e-6, 90),
        compressed=True,
        layers=LAYERS | {"head/kernel"},
        metadata_fields=frozenset({MetadataField.PER_SILO_METRICS}),
    ),
    "EU silo update -> EU regional, allowed": Flow(Artifact.MODEL_UPDATE, EU_SILO, EU_REGIONAL),
    "EU personalized model -> global, default deny": Flow(Artifact.PERSONALIZED_MODEL, EU_REGIONAL, GLOBAL),
    "raw data, refused before any rule": Flow(Artifact.RAW_DATA, EU_SILO, EU_REGIONAL),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--decisions", type=int, default=100_000, help="decide calls per run (default 100000)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per case; the best counts (default 5)")
    args = parser.parse_args()

    keys = load_trusted_keys([POLICIES / "keys"])
    load_s = best_seconds(lambda: load_policy(POLICIES / "eu.yaml", keys), args.repeats)
    policy = load_policy(POLICIES / "eu.yaml", keys)
    print(f"policy {policy.label}: {len(policy.rules)} rules, {policy.sha256}")
    print(f"load_policy (YAML + schema + canonical form + Ed25519 verify): {load_s * 1e3:8.2f} ms")
    print()
    print(f"{'flow':<62} {'µs/decision':>12} {'decisions/s':>14}  decision")
    for name, flow in FLOWS.items():
        count = args.decisions

        def run(flow: Flow = flow, count: int = count) -> None:
            for _ in range(count):
                decide(policy, flow)

        seconds = best_seconds(run, args.repeats)
        decision = decide(policy, flow)
        verdict = f"{'allow' if decision.allowed else 'deny'} by {decision.rule_id}"
        print(f"{name:<62} {seconds / count * 1e6:12.2f} {count / seconds:14,.0f}  {verdict}")

    probe = (
        "import sys, time; t = time.perf_counter(); import jurisfed.policy; "
        "print(f'{(time.perf_counter() - t) * 1e3:.0f}', 'tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    print()
    print(
        f"import jurisfed.policy in a fresh interpreter: {out[0]} ms; TensorFlow imported: {out[1] == 'True'}"
    )


if __name__ == "__main__":
    main()
