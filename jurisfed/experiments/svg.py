"""Small self-contained SVG charts for the reports: lines (optionally markers only) and bars.

No plotting library is installed, and a report must open offline, so the charts are written
as plain SVG text with their axes, ticks, labels and legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 36, 48
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22",
)  # fmt: skip


@dataclass(frozen=True)
class Series:
    name: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    dashed: bool = False
    color: int | None = None  # palette index; None: the series' position
    in_legend: bool = True


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    markers_only: bool = False,
) -> str:
    """Lines through each series' points (or markers alone), with a legend on the right."""
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys]
    x_scale = _Scale(xs, LEFT, WIDTH - RIGHT, log=log_x)
    y_scale = _Scale(ys, HEIGHT - BOTTOM, TOP)
    parts = [*_frame(title, x_label, y_label), *x_scale.ticks(vertical=False), *y_scale.ticks(vertical=True)]
    legend_row = 0
    for index, item in enumerate(series):
        color = PALETTE[(index if item.color is None else item.color) % len(PALETTE)]
        points = [(x_scale(x), y_scale(y)) for x, y in zip(item.xs, item.ys, strict=True)]
        if not markers_only and len(points) > 1:
            dash = ' stroke-dasharray="6 4"' if item.dashed else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{path}"/>')
        radius = 4 if markers_only else 2.5
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{color}"/>' for x, y in points)
        if item.in_legend:
            parts.append(_legend_entry(legend_row, item.name, color))
            legend_row += 1
    return _svg(parts)


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[float], *, y_label: str, log_y: bool = False
) -> str:
    """One bar per label, its value written above it."""
    y_scale = _Scale([*values, 0.0] if not log_y else list(values), HEIGHT - BOTTOM, TOP, log=log_y)
    parts = [*_frame(title, "", y_label), *y_scale.ticks(vertical=True)]
    slot = (WIDTH - RIGHT - LEFT) / max(len(values), 1)
    base = HEIGHT - BOTTOM
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + index * slot + slot * 0.15
        top = y_scale(value)
        color = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" height="{max(base - top, 0):.1f}" '
            f'fill="{color}"/>'
        )
        parts.append(_text(x + slot * 0.35, top - 4, _short(value), anchor="middle", size=10))
        parts.append(_legend_entry(index, label, color))
    return _svg(parts)


class _Scale:
    def __init__(self, values: Sequence[float], start: float, stop: float, *, log: bool = False) -> None:
        finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)] or [1.0]
        low, high = min(finite), max(finite)
        if log:
            low, high = math.log10(low), math.log10(high)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        pad = 0.05 * (high - low)
        self.low, self.high, self.log = low - pad, high + pad, log
        self.start, self.stop = start, stop

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.start + (v - self.low) / (self.high - self.low) * (self.stop - self.start)

    def ticks(self, *, vertical: bool) -> list[str]:
        if self.log:
            values = [10.0**e for e in range(math.floor(self.low), math.ceil(self.high) + 1)]
            values = [v for v in values if self.low <= math.log10(v) <= self.high]
        else:
            step = _nice_step((self.high - self.low) / 5)
            values = [k * step for k in range(math.ceil(self.low / step), math.floor(self.high / step) + 1)]
        out = []
        for value in values:
            at = self(value)
            if vertical:
                out.append(
                    f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at:.1f}" y2="{at:.1f}" stroke="#e5e5e5"/>'
                )
                out.append(_text(LEFT - 6, at + 4, _short(value), anchor="end", size=11))
            else:
                out.append(
                    f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#e5e5e5"/>'
                )
                out.append(_text(at, HEIGHT - BOTTOM + 16, _short(value), anchor="middle", size=11))
        return out


def _nice_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw))


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    middle_y = (TOP + HEIGHT - BOTTOM) / 2
    return [
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        _text(WIDTH / 2, 20, title, anchor="middle", size=14, bold=True),
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" '
        f'y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
        _text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 10, x_label, anchor="middle", size=12),
        f'<text x="16" y="{middle_y:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle_y:.1f})">{escape(y_label)}</text>',
    ]


def _legend_entry(index: int, name: str, color: str) -> str:
    y = TOP + 8 + index * 18
    x = WIDTH - RIGHT + 12
    return f'<rect x="{x}" y="{y - 9}" width="12" height="12" fill="{color}"/>' + _text(
        x + 18, y + 1, name[:26], anchor="start", size=11
    )


def _text(x: float, y: float, text: str, *, anchor: str, size: int, bold: bool = False) -> str:
    weight = ' font-weight="bold"' if bold else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{weight}>'
        f"{escape(text)}</text>"
    )


def _short(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def _svg(parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">\n{body}\n</svg>'
    )
