"""`explain`: what a reviewer reads must say what the policy says, in sentences, and the HTML
page must stand on its own (no scripts, nothing fetched) and escape whatever the file holds."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jurisfed.policy.explain import explain_html, explain_markdown
from jurisfed.policy.loader import parse_policy
from jurisfed.policy.model import Policy
from jurisfed.policy.signing import ApprovalStatus, check_approvals, load_trusted_keys

VOID = {"meta", "br", "hr", "img", "input", "link"}


class Structure(HTMLParser):
    """Collects tags, checks they nest, and notes anything that would load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("script", "iframe", "object", "embed", "link", "img"):
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or (name in ("src", "href") and value and not value.startswith("#")):
                self.problems.append(f"{tag} {name}={value}")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Structure:
    structure = Structure()
    structure.feed(page)
    structure.close()
    return structure


def test_the_eu_page_says_each_rule_in_a_sentence_with_its_basis_and_conditions(
    examples: dict[str, Policy], example_dir: Path
) -> None:
    eu = examples["EU"]
    checks = check_approvals(eu, load_trusted_keys([example_dir / "keys"]))
    page = explain_html(eu, checks)
    structure = parsed(page)
    assert structure.problems == []
    assert structure.open == []
    text = " ".join(" ".join(structure.text).split())
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>EU residency policy for federated model training — version 2</title>" in page
    assert "Nothing moves unless a rule below allows it." in text
    for rule in eu.rules:
        assert rule.id in text
        assert " ".join(rule.legal_basis.split()) in text
    assert (
        "The EU regional aggregator may send aggregates to the global aggregator, only if all of these hold:"
        in text
    )
    for clause in (
        "At least 5 silos contributed.",
        "Differential privacy was applied, spending no more than ε = 3 and δ = 0.00001 in any 90 days.",
        "It is compressed (quantized) before it is sent.",
        "The model layers head/bias are removed first (they stay in EU).",
        "Silo identifiers, host names, IP addresses, per-silo example counts and per-silo metrics "
        "are removed first.",
        "The receiving global aggregator is hosted in eu-frankfurt (Frankfurt am Main, Germany) or "
        "ch-zurich (Zurich, Switzerland).",
    ):
        assert clause in text
    assert "EU silos may send model updates to the EU regional aggregator, only if all of these hold:" in text
    assert (
        "The global aggregator may send model checkpoints to the EU regional aggregator, with no conditions."
        in text
    )
    assert "Approved by Demo Approver" in text
    assert "signatures verified" in text
    assert "2190 days (about 6 years)" in text
    assert eu.sha256 in text
    assert structure.tags.count("section") == len(eu.rules)


def test_the_in_page_says_what_never_leaves(examples: dict[str, Policy]) -> None:
    text = " ".join(parsed(explain_html(examples["IN"])).text)
    assert "What never leaves IN" in text
    assert "Nothing derived from health-records data leaves IN, in any form" in text
    assert "in-health-records-stay-in-india" in text
    assert "signatures not checked here" in text


def test_markdown_says_the_same(examples: dict[str, Policy]) -> None:
    markdown = explain_markdown(examples["GLOBAL"])
    assert markdown.startswith("# Global aggregator policy\n")
    assert "## What may move (4 rules)" in markdown
    assert (
        "Regional aggregators in the group federation-members (EU, IN and US) may send aggregates to the "
        "global aggregator, only if all of these hold:"
    ) in markdown
    assert "The global aggregator may send telemetry to the operator tool of the federation" in markdown
    assert (
        "Legal basis: Federation agreement, section 5 (distribution of the shared model). Rule id: "
        "`global-model-to-members`." in markdown
    )
    assert "| global aggregator | model checkpoints | 730 days (about 2 years) |" in markdown
    assert "The nodes this policy governs run in ch-zurich (Zurich, Switzerland)." in markdown


def test_an_unsigned_policy_says_so(conditions_policy: Policy) -> None:
    assert "This version has not been approved" in explain_markdown(conditions_policy)
    assert "Not approved: unsigned" in explain_html(conditions_policy)


def test_a_tampered_policy_says_so(example_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "eu.yaml"
    path.write_text(
        (example_dir / "eu.yaml").read_text().replace("min_cohort_silos: 5", "min_cohort_silos: 2")
    )
    policy = parse_policy(path.read_text())
    checks = check_approvals(policy, load_trusted_keys([example_dir / "keys"]))
    assert [c.status for c in checks] == [ApprovalStatus.INVALID]
    assert "Changed after approval" in explain_html(policy, checks)
    assert "does NOT match this text" in explain_markdown(policy, checks)


@pytest.mark.parametrize("hostile", ['<script>alert("x")</script>', '<img src="https://evil.example/x.png">'])
def test_whatever_the_file_holds_is_escaped(conditions_text: str, hostile: str) -> None:
    text = conditions_text.replace("title: One rule per condition", f"title: '{hostile}'")
    text = text.replace("legal_basis: Law 2", f"legal_basis: '{hostile}'")
    page = explain_html(parse_policy(text))
    assert parsed(page).problems == []
    assert hostile not in page
    assert "&lt;" in page
    markdown = explain_markdown(parse_policy(text))
    assert re.search(r"(?<!\\)<", markdown) is None  # every < is escaped: shown, never rendered as HTML
