"""docs/configuration.md is generated from the configuration classes, and is current."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jurisfed import config_reference
from jurisfed.config import _env_names, load_config
from jurisfed.config_reference import TIERS, keys, main, render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+) \| ([^|]+) \| `(JURISFED_[A-Z_]+)` \| (.+) \|$", re.MULTILINE)


def test_the_committed_reference_is_what_the_classes_generate() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m jurisfed.config_reference`"
    )


def test_every_key_of_every_tier_is_documented_with_the_variable_the_loader_accepts() -> None:
    text = render()
    rows = {match.group(4): match.groups() for match in ROW.finditer(text)}
    for tier in TIERS:
        kind = tier.config_class()
        accepted = set(_env_names(kind, f"JURISFED_{tier.env_prefix.upper()}"))
        documented = {
            variable for variable in rows if variable.startswith(f"JURISFED_{tier.env_prefix.upper()}_")
        }
        assert documented == accepted, tier.title
    for name, type_name, default, _, meaning in rows.values():
        assert type_name.strip(), name
        assert default.strip(), name
        assert meaning.strip(), name
    # Nested settings are rows of their own, and required keys say so.
    for nested in ("tls.cert", "tls.key", "tls.ca_cert", "training.epochs", "training.learning_rate"):
        assert f"| `{nested}` |" in text
    assert rows["JURISFED_GLOBAL_TRAINING_EPOCHS"][1:3] == ("int", "`2`")
    assert rows["JURISFED_REGIONAL_JURISDICTION"][2] == "**required**"
    assert rows["JURISFED_REGIONAL_AUDIT_KEY"][1:3] == ("Path, optional", "empty")


def test_the_documented_variables_really_override_the_file(tmp_path: Path) -> None:
    """Pick each tier's documented variables for two keys and load a config with them."""
    text = render()
    rows = {
        match.group(1) + "@" + match.group(4).split("_")[1]: match.group(4) for match in ROW.finditer(text)
    }
    kind = next(t for t in TIERS if t.env_prefix == "global").config_class()
    environ = {rows["training.epochs@GLOBAL"]: "7", rows["listen@GLOBAL"]: "0.0.0.0:1"}
    required = {
        f.name: "x"
        for f in dataclasses.fields(kind)
        if f.default is dataclasses.MISSING and f.name != "training"
    }
    path = tmp_path / "global.yaml"
    lines = [f"{name}: {value}" for name, value in required.items() if name not in ("tls", "member_policies")]
    lines += ["tls: {ca_cert: a, cert: b, key: c}", "member_policies: [m.yaml]"]
    path.write_text("\n".join(lines) + "\n")
    config = load_config(kind, path, env_prefix="global", environ=environ)
    assert config.training.epochs == 7
    assert config.listen == "0.0.0.0:1"


def test_check_fails_on_a_stale_file_and_write_mode_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "configuration.md"
    assert main(["--check", "--out", str(out)]) == 1
    assert "run `python -m jurisfed.config_reference`" in capsys.readouterr().err
    out.write_text(render().replace("local SGD learning rate", "learning rate"))
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0
    assert main(["--check", "--out", str(out)]) == 0
    assert out.read_text() == render()


def test_the_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jurisfed.config_reference", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "docs/configuration.md is current" in result.stdout


@dataclasses.dataclass(frozen=True)
class Pair:
    left: int
    right: int = 2


@dataclasses.dataclass(frozen=True)
class Holder:
    pair: Pair = dataclasses.field(metadata={"help": "two numbers"})


def test_a_key_without_its_own_text_takes_its_groups() -> None:
    rows = keys(Holder, "demo")
    assert [(k.name, k.variable, k.default, k.meaning) for k in rows] == [
        ("pair.left", "JURISFED_DEMO_PAIR_LEFT", "**required**", "part of `pair`: two numbers"),
        ("pair.right", "JURISFED_DEMO_PAIR_RIGHT", "`2`", "part of `pair`: two numbers"),
    ]
    assert Path("docs/configuration.md") == config_reference.DEFAULT_OUT
