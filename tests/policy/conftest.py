"""Policies for the policy tests: the committed examples, and a small one per condition type."""

from __future__ import annotations

from pathlib import Path

import pytest

from jurisfed.policy.loader import parse_policy, read_policy
from jurisfed.policy.model import Policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "policies"
EXAMPLE_KEYS = EXAMPLES / "keys"
TOPOLOGY = EXAMPLES / "topology" / "demo.yaml"

# One rule per condition type, each on a scope of its own, so that a flow meets exactly one.
CONDITIONS_POLICY = """\
format: jurisfed-residency-policy/v1
policy: conditions
version: 1
title: One rule per condition
jurisdiction: EU
effective_from: "2026-01-01"
owners: [{name: Test owner}]
default: deny
groups:
  eu-eea: {description: EU and EEA, jurisdictions: [EU, IS, LI, "NO"]}
locations:
  eu-frankfurt: {place: Frankfurt, jurisdiction: EU}
  ch-zurich: {place: Zurich, jurisdiction: CH}
  us-east: {place: Virginia, jurisdiction: US}
restricted_data:
  - {id: health-stays, data_class: health-records, description: Health data stays., legal_basis: Law 1}
rules:
  - id: cohort-rule
    description: Aggregates of enough silos may go to the global.
    legal_basis: Law 2
    artifact: aggregate
    from: {tier: regional, jurisdiction: EU}
    to: {tier: global, jurisdiction: GLOBAL}
    conditions: {min_cohort_silos: 5}
  - id: privacy-rule
    description: Checkpoints may go to the global with DP.
    legal_basis: Law 3
    artifact: model_checkpoint
    from: {tier: regional, jurisdiction: EU}
    to: {tier: global, jurisdiction: GLOBAL}
    conditions:
      differential_privacy: {max_epsilon: 3, max_delta: 1e-5, period_days: 90}
  - id: compression-rule
    description: Telemetry may go to the global compressed.
    legal_basis: Law 4
    artifact: telemetry
    from: {tier: regional, jurisdiction: EU}
    to: {tier: global, jurisdiction: GLOBAL}
    conditions: {compression_required: true}
  - id: layers-rule
    description: Personalized models may go to the US regional without their heads.
    legal_basis: Law 5
    artifact: personalized_model
    from: {tier: regional, jurisdiction: EU}
    to: {tier: regional, jurisdiction: US}
    conditions: {layers_stay_local: ["head/*", "adapter_?/kernel"]}
  - id: metadata-rule
    description: Evidence may go to the global without silo ids and host names.
    legal_basis: Law 6
    artifact: audit_evidence
    from: {tier: regional, jurisdiction: EU}
    to: {tier: global, jurisdiction: GLOBAL}
    conditions: {strip_metadata: [silo_ids, host_names]}
  - id: hosting-rule
    description: Silos send updates to a regional in Frankfurt.
    legal_basis: Law 7
    artifact: model_update
    from: {tier: silo, jurisdiction: EU}
    to: {tier: regional, jurisdiction: EU}
    conditions: {hosted_in: [eu-frankfurt]}
  - id: group-rule
    description: The global sends checkpoints to EEA regionals.
    legal_basis: Law 8
    artifact: model_checkpoint
    from: {tier: global, jurisdiction: GLOBAL}
    to: {tier: regional, jurisdiction: eu-eea}
  - id: operator-rule
    description: The global shows operators telemetry.
    legal_basis: Law 9
    artifact: telemetry
    from: {tier: global, jurisdiction: GLOBAL}
    to: {tier: operator, jurisdiction: GLOBAL}
"""


@pytest.fixture(scope="session")
def conditions_policy() -> Policy:
    return parse_policy(CONDITIONS_POLICY, "conditions.yaml")


@pytest.fixture(scope="session")
def examples() -> dict[str, Policy]:
    """The committed example policies by jurisdiction: EU, IN, US, GLOBAL."""
    policies = [read_policy(EXAMPLES / f"{name}.yaml") for name in ("eu", "in", "us", "global")]
    return {policy.jurisdiction: policy for policy in policies}


@pytest.fixture(scope="session")
def conditions_text() -> str:
    """The YAML of `conditions_policy`, for tests that change it."""
    return CONDITIONS_POLICY


@pytest.fixture(scope="session")
def example_dir() -> Path:
    """deploy/policies: eu.yaml, in.yaml, us.yaml, global.yaml, keys/, topology/demo.yaml."""
    return EXAMPLES
