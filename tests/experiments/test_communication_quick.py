"""`jurisfed experiment communication --quick`: bytes measured on the wire, ratios as the codecs say."""

from __future__ import annotations

import json
from pathlib import Path

from jurisfed.cli import main


def test_quick_communication_measures_each_codec(tmp_path: Path) -> None:
    assert main(["experiment", "communication", "--quick", "--out", str(tmp_path)]) == 0
    tasks = json.loads((tmp_path / "results.json").read_text())["tasks"]
    variants = tasks["digits alpha=0.1"]
    assert set(variants) == {"raw", "int8", "top-k-int8 + EF", "top-k-int8, no EF", "top-k + EF"}
    raw = variants["raw"]["regional_to_global_bytes_per_round_per_jurisdiction"]
    # 50,826 float32 values plus framing: more than the payload, and not much more.
    assert 4 * 50_826 < raw < 4 * 50_826 * 1.01
    assert variants["int8"]["ratio_vs_raw_regional_to_global"] > 3.9
    assert variants["top-k-int8 + EF"]["ratio_vs_raw_regional_to_global"] > 50
    assert variants["top-k + EF"]["ratio_vs_raw_regional_to_global"] > 40
    # The codec is on the regional -> global hop only: silo streams are raw in every variant.
    silo_bytes = {
        v["silo_to_regional_bytes_per_round_all_silos_of_a_jurisdiction"] for v in variants.values()
    }
    assert max(silo_bytes) - min(silo_bytes) < 0.001 * max(silo_bytes)
    assert (tmp_path / "report.html").read_text().count("<svg") == 3
