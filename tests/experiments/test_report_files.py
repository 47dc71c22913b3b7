"""Reports: Markdown, self-contained HTML with inline SVG, and results.json."""

from __future__ import annotations

import json
from pathlib import Path

from jurisfed.experiments.report import Figure, Report, Section, Table, write_report
from jurisfed.experiments.svg import Series, bar_chart, line_chart


def test_a_report_is_written_in_three_forms(tmp_path: Path) -> None:
    chart = line_chart("acc", [Series("a", (1.0, 2.0), (50.0, 60.0))], x_label="round", y_label="%")
    bars = bar_chart("bytes", ["raw", "int8"], [200_000.0, 50_000.0], y_label="bytes", log_y=True)
    report = Report(
        title="T <1>",
        header=("seeds 0",),
        sections=(
            Section(
                "S",
                ("text",),
                (Table("cap", ("x", "y"), (("1", "a|b"),)),),
                (Figure("f", chart), Figure("g", bars)),
            ),
        ),
        results={"answer": [1, 2]},
    )
    written = write_report(report, tmp_path)
    assert {p.name for p in written} == {
        "report.md",
        "report.html",
        "results.json",
        "figure-1.svg",
        "figure-2.svg",
    }
    markdown = (tmp_path / "report.md").read_text()
    assert "| 1 | a\\|b |" in markdown
    assert "![f](figure-1.svg)" in markdown
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 2
    assert "T &lt;1&gt;" in html
    assert "src=" not in html
    assert "href=" not in html
    assert json.loads((tmp_path / "results.json").read_text()) == {"answer": [1, 2]}


def test_charts_are_well_formed_svg() -> None:
    import xml.etree.ElementTree as ElementTree

    chart = line_chart(
        "acc",
        [Series("a", (1.0, 10.0, 100.0), (1.0, 2.0, 3.0))],
        x_label="x",
        y_label="y",
        log_x=True,
        markers_only=True,
    )
    root = ElementTree.fromstring(chart)
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}circle")) == 3
