"""Eligibility: each rule a silo can break excludes it with its own reason code and a sentence
it can act on; a whole jurisdiction's selection respects the cohort cap, rotates fairly and
counts the excluded per reason."""

from __future__ import annotations

import pytest

from jurisfed.eligibility import (
    EligibilityRules,
    Eligible,
    Excluded,
    ExclusionReason,
    SiloFacts,
    check_eligibility,
    select_cohort,
)
from jurisfed.errors import InvalidInput

SCHEMA = "a" * 64
RULES = EligibilityRules(
    min_examples=30, max_staleness_rounds=2, code_versions=("0.2.0",), schema_sha256=SCHEMA
)


def silo(name: str = "hospital-a", **changes: object) -> SiloFacts:
    facts: dict[str, object] = {
        "silo_id": name,
        "example_count": 120,
        "schema_sha256": SCHEMA,
        "code_version": "0.2.0",
        "last_synced_round": 9,
        "quarantined": False,
    }
    facts.update(changes)
    return SiloFacts(**facts)  # type: ignore[arg-type]


def test_a_silo_meeting_every_rule_is_eligible() -> None:
    decision = check_eligibility(RULES, silo(), current_round=10)
    assert decision == Eligible("hospital-a")
    assert decision


@pytest.mark.parametrize(
    ("changes", "reason", "sentence"),
    [
        (
            {"example_count": 29},
            ExclusionReason.TOO_FEW_EXAMPLES,
            "holds 29 examples; round 10 requires at least 30",
        ),
        (
            {"last_synced_round": 7},
            ExclusionReason.STALE,
            "last synced in round 7, 3 rounds before round 10; "
            "at most 2 are allowed: fetch the current checkpoint to rejoin",
        ),
        (
            {"code_version": "0.1.0"},
            ExclusionReason.WRONG_CODE_VERSION,
            "runs code version 0.1.0; round 10 accepts 0.2.0",
        ),
        ({"schema_sha256": "b" * 64}, ExclusionReason.SCHEMA_DRIFT, f"requires data schema {SCHEMA}"),
        ({"schema_sha256": ""}, ExclusionReason.SCHEMA_DRIFT, "declared no schema hash"),
        ({"quarantined": True}, ExclusionReason.QUARANTINED, "is quarantined"),
    ],
)
def test_each_broken_rule_excludes_with_its_reason_code(
    changes: dict[str, object], reason: ExclusionReason, sentence: str
) -> None:
    decision = check_eligibility(RULES, silo(**changes), current_round=10)

    assert isinstance(decision, Excluded)
    assert not decision
    assert decision.reason is reason
    assert decision.silo_id == "hospital-a"
    assert sentence in decision.sentence


def test_staleness_at_the_limit_is_allowed_and_a_silo_that_never_synced_gets_the_current_model() -> None:
    assert check_eligibility(RULES, silo(last_synced_round=8), current_round=10)
    assert check_eligibility(RULES, silo(last_synced_round=None), current_round=10)


def test_rules_left_empty_check_nothing() -> None:
    anything = EligibilityRules()
    odd = silo(example_count=1, schema_sha256="", code_version="", last_synced_round=0)
    assert check_eligibility(anything, odd, current_round=50)


def test_quarantine_is_reported_before_any_other_reason() -> None:
    decision = check_eligibility(RULES, silo(quarantined=True, example_count=1, code_version="x"), 10)
    assert isinstance(decision, Excluded)
    assert decision.reason is ExclusionReason.QUARANTINED


def test_a_sync_recorded_after_the_current_round_is_an_error_not_a_pass() -> None:
    with pytest.raises(InvalidInput, match="synced in round 12, after the current round 10"):
        check_eligibility(RULES, silo(last_synced_round=12), current_round=10)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"min_examples": 0}, "min_examples must be at least 1"),
        ({"max_staleness_rounds": -1}, "max_staleness_rounds must not be negative"),
        ({"code_versions": ("0.2.0", "")}, "empty version"),
    ],
)
def test_invalid_rules_are_refused(rules: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EligibilityRules(**rules)  # type: ignore[arg-type]


def test_a_jurisdiction_selection_excludes_and_counts_per_reason() -> None:
    silos = [
        silo("a"),
        silo("b", example_count=3),
        silo("c", last_synced_round=1),
        silo("d", code_version="0.1.0"),
        silo("e", example_count=4),
        silo("f"),
    ]
    selection = select_cohort(RULES, silos, current_round=10, max_silos=5)

    assert selection.selected == ("a", "f")
    assert {e.silo_id: e.reason for e in selection.excluded} == {
        "b": ExclusionReason.TOO_FEW_EXAMPLES,
        "c": ExclusionReason.STALE,
        "d": ExclusionReason.WRONG_CODE_VERSION,
        "e": ExclusionReason.TOO_FEW_EXAMPLES,
    }
    assert selection.counts() == {
        ExclusionReason.TOO_FEW_EXAMPLES: 2,
        ExclusionReason.STALE: 1,
        ExclusionReason.WRONG_CODE_VERSION: 1,
    }


def test_beyond_the_cohort_cap_silos_are_cohort_full_and_take_turns() -> None:
    silos = [silo(name, last_synced_round=None) for name in ("a", "b", "c", "d")]
    picked: list[tuple[str, ...]] = []
    for number in range(10, 14):
        selection = select_cohort(RULES, silos, current_round=number, max_silos=2)
        assert len(selection.selected) == 2
        assert selection.counts() == {ExclusionReason.COHORT_FULL: 2}
        assert set(selection.selected).isdisjoint(e.silo_id for e in selection.excluded)
        picked.append(selection.selected)
    chosen = [name for names in picked for name in names]
    assert {name: chosen.count(name) for name in "abcd"} == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_a_selection_refuses_duplicate_silos_and_a_zero_cap() -> None:
    with pytest.raises(InvalidInput, match="distinct"):
        select_cohort(RULES, [silo("a"), silo("a")], current_round=10, max_silos=3)
    with pytest.raises(InvalidInput, match="max_silos must be at least 1"):
        select_cohort(RULES, [silo("a")], current_round=10, max_silos=0)
