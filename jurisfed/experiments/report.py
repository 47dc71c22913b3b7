"""An experiment's report: Markdown, self-contained HTML (inline SVG) and results.json, one folder.

OUT/report.md       text, tables, figures linked as OUT/figure-<n>.svg
OUT/report.html     the same, figures inline: one file that opens offline
OUT/results.json    every measured number the tables were built from
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

_STYLE = (
    "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "figure{margin:1em 0}figcaption{font-size:13px;color:#555}"
)


@dataclass(frozen=True)
class Table:
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    caption: str
    svg: str


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Report:
    title: str
    header: tuple[str, ...]  # what ran, how, with which seeds and rounds
    sections: tuple[Section, ...]
    results: Mapping[str, object] = field(default_factory=dict)  # JSON-ready measured numbers


def write_report(report: Report, out_dir: Path) -> tuple[Path, ...]:
    """Write report.md, report.html, results.json and the figures; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = [figure for section in report.sections for figure in section.figures]
    names = {id(figure): f"figure-{n + 1}.svg" for n, figure in enumerate(figures)}
    for figure in figures:
        path = out_dir / names[id(figure)]
        path.write_text(figure.svg + "\n", encoding="utf-8")
        written.append(path)
    markdown = out_dir / "report.md"
    markdown.write_text(_markdown(report, names), encoding="utf-8")
    html = out_dir / "report.html"
    html.write_text(_html(report), encoding="utf-8")
    results = out_dir / "results.json"
    results.write_text(json.dumps(report.results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return (markdown, html, results, *written)


def _markdown(report: Report, figure_names: Mapping[int, str]) -> str:
    lines = [f"# {report.title}", ""]
    for paragraph in report.header:
        lines += [paragraph, ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [f"**{table.caption}**", "", *_markdown_table(table.columns, table.rows), ""]
        for figure in section.figures:
            lines += [f"![{figure.caption}]({figure_names[id(figure)]})", "", f"*{figure.caption}*", ""]
    return "\n".join(lines)


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---"] + ["---:"] * (len(columns) - 1)
    return [line(columns), "|" + "|".join(align) + "|", *(line(row) for row in rows)]


def _html(report: Report) -> str:
    body = [f"<h1>{escape(report.title)}</h1>", *(f"<p>{escape(p)}</p>" for p in report.header)]
    for section in report.sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body.extend(f"<p>{escape(p)}</p>" for p in section.paragraphs)
        for table in section.tables:
            head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
            )
            body.append(f"<table><caption>{escape(table.caption)}</caption><tr>{head}</tr>{rows}</table>")
        for figure in section.figures:
            body.append(f"<figure>{figure.svg}<figcaption>{escape(figure.caption)}</figcaption></figure>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
