"""`jurisfed policy ...` as an operator or a reviewer uses it: exit status and what it prints."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jurisfed.cli import main as jurisfed_main
from jurisfed.policy.cli import add_policy_commands

EXIT_PROBLEM = 1


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = jurisfed_main(["policy", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workspace(tmp_path: Path, example_dir: Path) -> Path:
    """A copy of deploy/policies to sign and edit."""
    target = tmp_path / "policies"
    shutil.copytree(example_dir, target)
    return target


def test_the_commands_hang_off_a_jurisfed_parser() -> None:
    parser = argparse.ArgumentParser(prog="jurisfed")
    add_policy_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", "diff", "a.yaml", "b.yaml"])
    assert (args.command, args.policy_command, args.old, args.new) == (
        "policy",
        "diff",
        Path("a.yaml"),
        Path("b.yaml"),
    )
    assert callable(args.run)


@pytest.mark.parametrize("command", ["check", "explain", "diff", "sign", "verify", "simulate", "keygen"])
def test_every_command_explains_itself(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exited:
        jurisfed_main(["policy", command, "--help"])
    assert exited.value.code == 0
    assert f"jurisfed policy {command}" in capsys.readouterr().out


def test_check_with_topology_and_keys_passes_the_examples(
    capsys: pytest.CaptureFixture[str], example_dir: Path
) -> None:
    policies = [example_dir / f"{name}.yaml" for name in ("eu", "in", "us", "global")]
    code, out, _ = run(
        capsys,
        "check",
        *policies,
        "--keys",
        example_dir / "keys",
        "--topology",
        example_dir / "topology" / "demo.yaml",
    )
    assert code == 0, out
    assert out.count("every needed flow is allowed; no dead or conflicting rule") == 3
    # EU's rule for hosts without adequacy is dead while the global runs in Zurich: a note, no failure.
    assert "  dead: rule eu-private-aggregates-elsewhere can never allow anything here" in out
    assert out.count("(signatures verified)") == 4
    assert "eu-residency v2 (EU), 8 rule(s), sha256:" in out


def test_check_reports_an_invalid_file_and_fails(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    path = workspace / "eu.yaml"
    path.write_text(path.read_text().replace("min_cohort_silos: 5", "min_cohort_silos: five"))
    code, out, _ = run(capsys, "check", path)
    assert code == EXIT_PROBLEM
    assert "rules[3].conditions.min_cohort_silos: 'five' is not of type 'integer'" in out


def test_check_reports_topology_findings_and_fails(
    capsys: pytest.CaptureFixture[str], workspace: Path
) -> None:
    topology = workspace / "topology" / "demo.yaml"
    topology.write_text(topology.read_text().replace("location: ch-zurich", "location: us-east"))
    eu = workspace / "eu.yaml"
    eu.write_text(eu.read_text().replace("hosted_in: [us-east, in-mumbai]", "hosted_in: [in-mumbai]"))
    code, out, _ = run(capsys, "check", eu, "--topology", topology)
    assert code == EXIT_PROBLEM
    assert (
        "  missing: the federation needs aggregates from EU/regional@eu-frankfurt to GLOBAL/global@us-east"
        in out
    )
    assert "  dead: rule eu-aggregates-to-global can never allow anything here" in out


def test_explain_writes_a_self_contained_page(
    capsys: pytest.CaptureFixture[str], example_dir: Path, tmp_path: Path
) -> None:
    out_html = tmp_path / "out.html"
    code, out, _ = run(
        capsys, "explain", example_dir / "eu.yaml", "--html", out_html, "--keys", example_dir / "keys"
    )
    assert code == 0
    assert out == f"wrote {out_html}\n"
    page = out_html.read_text()
    assert "The EU regional aggregator may send aggregates to the global aggregator" in page
    assert "signatures verified" in page
    assert "<script" not in page
    code, out, _ = run(capsys, "explain", example_dir / "us.yaml")
    assert out.startswith("# US residency policy for federated model training on health data\n")


def test_diff_prints_one_sentence_per_change(
    capsys: pytest.CaptureFixture[str], example_dir: Path, workspace: Path
) -> None:
    new = workspace / "eu.yaml"
    text = (
        new.read_text()
        .replace("version: 2", "version: 3")
        .replace("min_cohort_silos: 5", "min_cohort_silos: 8", 1)
    )
    new.write_text(
        text.replace(
            "hosted_in: [eu-frankfurt, ch-zurich]\n\n  - id: eu-private",
            "hosted_in: [ch-zurich]\n\n  - id: eu-private",
        )
    )
    code, out, _ = run(capsys, "diff", example_dir / "eu.yaml", new)
    assert code == 0
    assert out.splitlines() == [
        "Policy eu-residency: version 2 → version 3",
        "",
        "2 changes: 0 loosen, 2 tighten, 0 neither",
        "",
        "- [tightens] Rule eu-aggregates-to-global: the minimum number of contributing silos rises "
        "from 5 to 8.",
        "- [tightens] Rule eu-aggregates-to-global no longer allows a receiver hosted in eu-frankfurt.",
    ]


def test_keygen_sign_verify_round_trip(
    capsys: pytest.CaptureFixture[str], workspace: Path, tmp_path: Path
) -> None:
    private, public = tmp_path / "me.key.pem", tmp_path / "trusted" / "me.pem"
    code, out, _ = run(capsys, "keygen", "--private-key", private, "--public-key", public)
    assert code == 0
    assert "(mode 0600)" in out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600

    policy = workspace / "eu.yaml"
    policy.write_text(policy.read_text().replace("min_cohort_silos: 5", "min_cohort_silos: 6"))
    code, out, _err = run(capsys, "verify", policy, "--keys", workspace / "keys")
    assert code == EXIT_PROBLEM
    assert "  invalid   Demo Approver" in out
    assert "  REFUSED: policy" in out
    assert "was changed after it was approved" in out

    code, out, _ = run(capsys, "sign", policy, "--key", private, "--approver", "A. Jones, DPO")
    assert code == 0
    assert "dropped the approval by Demo Approver (example policies only; not a legal approval)" in out
    assert f"signed {policy} as A. Jones, DPO (key ed25519:" in out

    code, out, _ = run(capsys, "verify", policy, "--keys", public.parent)
    assert code == 0
    assert "  valid     A. Jones, DPO" in out
    assert "APPROVED" in out
    code, out, _ = run(capsys, "verify", policy, "--keys", workspace / "keys")
    assert code == EXIT_PROBLEM
    assert "  untrusted A. Jones, DPO" in out


def test_sign_with_a_missing_key_says_so(
    capsys: pytest.CaptureFixture[str], workspace: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "sign", workspace / "eu.yaml", "--key", tmp_path / "nope.pem", "--approver", "Me"
    )
    assert code == EXIT_PROBLEM
    assert err.startswith("jurisfed policy sign: cannot read private key")


def test_simulate_a_described_flow(capsys: pytest.CaptureFixture[str], example_dir: Path) -> None:
    policies = [example_dir / "eu.yaml", example_dir / "global.yaml"]
    args = [
        "--artifact",
        "aggregate",
        "--from",
        "EU/regional",
        "--to",
        "GLOBAL/global@ch-zurich",
        "--compressed",
    ]
    facts = [
        "--cohort-silos",
        "5",
        "--epsilon",
        "2",
        "--delta",
        "1e-6",
        "--period-days",
        "90",
        "--layers",
        "hidden_1/kernel",
        "--metadata",
        "",
    ]
    code, out, _ = run(capsys, "simulate", *policies, *args, *facts)
    assert code == 0, out
    assert "ALLOWED  aggregate EU/regional -> GLOBAL/global@ch-zurich" in out
    assert "eu-residency v2 allows by rule eu-aggregates-to-global" in out
    code, out, _ = run(capsys, "simulate", *policies, *args, "--cohort-silos", "4")
    assert code == EXIT_PROBLEM
    assert (
        "eu-residency v2 refuses by rule eu-aggregates-to-global: rule eu-aggregates-to-global: 4 "
        "silo(s) contributed" in out
    )


def test_simulate_needs_a_flow(capsys: pytest.CaptureFixture[str], example_dir: Path) -> None:
    code, _, err = run(capsys, "simulate", example_dir / "eu.yaml")
    assert code == EXIT_PROBLEM
    assert "no flow to simulate" in err
    code, _, err = run(
        capsys,
        "simulate",
        example_dir / "eu.yaml",
        "--artifact",
        "aggregate",
        "--from",
        "EU/regional",
        "--to",
        "GLOBAL/global",
        "--epsilon",
        "1",
    )
    assert "--epsilon needs --period-days" in err


def test_python_dash_m_runs_the_commands(example_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jurisfed", "policy", "check", str(example_dir / "in.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "in-residency v1 (IN)" in result.stdout
