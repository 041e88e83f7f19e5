"""Charts as geometry for inline SVG, computed on the server: no chart library, no script.

A chart is drawn in three pieces so that its text keeps one size at any width: the plot (bars,
lines, grid) stretches to the width of the page (`preserveAspectRatio="none"`, strokes that do
not scale), while the axis labels sit in SVGs without a viewBox, where a unit is a CSS pixel:
the y labels at fixed pixel heights beside the plot, the x labels at percentages of its width.
Axis ticks fall on round numbers (1, 2 or 5 times a power of ten).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 600  # the plot's viewBox width: stretched to the page, so only proportions matter
HEIGHT = 170  # the plot's height in CSS pixels (its viewBox height too: y is never scaled)
PAD_TOP = 8
PAD_BOTTOM = 4
PLOT_H = HEIGHT - PAD_TOP - PAD_BOTTOM
MAX_TICKS = 5
# A line keeps at most this many vertices (more cannot be told apart at this width); vertices
# get a hover box with their value only when there are few of them.
MAX_LINE_POINTS = 320
MAX_MARKED_POINTS = 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int  # index into the chart's legend, for the colour class
    title: str  # the tooltip: the exact value


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    series: int
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    position: float  # y: pixels from the top of the plot; x: percent of the plot's width
    label: str
    anchor: str = "middle"  # x labels at either end stay inside the chart


@dataclass
class Chart:
    """Everything the `chart` macro draws: bars or polylines, axis ticks, a legend."""

    title: str
    legend: list[str]
    bars: list[Bar] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (series, "x,y x,y ...")
    points: list[Point] = field(default_factory=list)  # line vertices with their value
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    empty: bool = False
    summary: str = ""  # for screen readers


def nice_step(span: float, max_ticks: int = MAX_TICKS) -> float:
    """Return the smallest step of 1, 2 or 5 times a power of ten that divides `span` into at
    most `max_ticks - 1` intervals."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    rough = span / max(max_ticks - 1, 1)
    power = 10.0 ** math.floor(math.log10(rough))
    for factor in (1, 2, 5, 10):
        if factor * power >= rough * (1 - 1e-9):
            return factor * power
    return 10 * power  # unreachable: 10 * power >= rough


def nice_ticks(low: float, high: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Return round tick values covering [low, high]: multiples of a `nice_step`, the first at
    or below `low`, the last at or above `high`."""
    if high < low:
        low, high = high, low
    if high == low:
        high = low + (abs(low) or 1.0)
    step = nice_step(high - low, max_ticks)
    while True:
        first = math.floor(low / step + 1e-9)
        last = math.ceil(high / step - 1e-9)
        if last - first + 1 <= max_ticks:
            break
        step = nice_step(step * max_ticks, max_ticks)  # the next round step up
    decimals = max(0, -math.floor(math.log10(step)))
    return [round(k * step, decimals) for k in range(first, last + 1)]


def _fmt(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.6g}"


def _y_ticks(values: Sequence[float], unit: str = "") -> list[Tick]:
    low, high = values[0], values[-1]
    return [
        Tick(
            position=round(PAD_TOP + PLOT_H * (1 - (v - low) / (high - low)), 2),
            label=_fmt(v) + unit,
        )
        for v in values
    ]


def _x_tick(percent: float, label: str) -> Tick:
    anchor = "start" if percent < 1 else "end" if percent > 99 else "middle"
    return Tick(position=round(percent, 2), label=label, anchor=anchor)


def grouped_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    unit: str = "",
    max_labels: int = 10,
) -> Chart:
    """Bars per label, one per series side by side (a missing value draws no bar)."""
    values = [v for _, vs in series for v in vs if v is not None]
    chart = Chart(title=title, legend=[name for name, _ in series])
    chart.empty = not labels or not any(values)
    ticks = nice_ticks(0.0, max(values, default=0.0) or 1.0)
    top = ticks[-1]
    slot = WIDTH / max(len(labels), 1)
    bar_w = max(slot * 0.8 / max(len(series), 1), 1.0)
    every = max(1, -(-len(labels) // max_labels))
    for i, label in enumerate(labels):
        left = i * slot + slot * 0.1
        for s, (name, vs) in enumerate(series):
            value = vs[i]
            if value is None:
                continue
            h = PLOT_H * value / top
            chart.bars.append(
                Bar(
                    x=round(left + s * bar_w, 2),
                    y=round(PAD_TOP + PLOT_H - h, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    series=s,
                    title=f"{label} · {name}: {_fmt(value)}{unit}",
                )
            )
        if i % every == 0:
            chart.x_ticks.append(
                Tick(position=round(100 * (i + 0.5) / max(len(labels), 1), 2), label=label)
            )
    chart.y_ticks = _y_ticks(ticks, unit)
    totals = ", ".join(f"{name} {_fmt(sum(v or 0 for v in vs))}" for name, vs in series)
    chart.summary = f"{title}: {totals}"
    return chart


def lines(
    title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, x_label: str = ""
) -> Chart:
    """One polyline per series of (x, y) points, on shared axes with round ticks."""
    chart = Chart(title=title, legend=[name for name, _ in series])
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    chart.empty = not xs
    if chart.empty:
        return chart
    # x spans the data (the ticks are the round values inside it); y extends to round ends.
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    x_values = [x for x in nice_ticks(x_min, x_max) if x_min <= x <= x_max]
    y_values = nice_ticks(min(ys), max(ys))
    y_min, y_max = y_values[0], y_values[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            round(WIDTH * (x - x_min) / (x_max - x_min), 2),
            round(PAD_TOP + PLOT_H * (1 - (y - y_min) / (y_max - y_min)), 2),
        )

    for s, (name, all_pts) in enumerate(series):
        pts = _thin(all_pts, MAX_LINE_POINTS)
        placed = [at(x, y) for x, y in pts]
        chart.lines.append((s, " ".join(f"{px},{py}" for px, py in placed)))
        if len(pts) > MAX_MARKED_POINTS:
            continue
        for (x, y), (px, py) in zip(pts, placed, strict=True):
            chart.points.append(Point(px, py, s, f"{name} @ {x_label}{_fmt(x)}: {_fmt(y)}"))
    chart.x_ticks = [_x_tick(100 * (x - x_min) / (x_max - x_min), _fmt(x)) for x in x_values]
    chart.y_ticks = _y_ticks(y_values)
    chart.summary = f"{title}: " + ", ".join(f"{n} ({len(p)} points)" for n, p in series)
    return chart


def _thin(points: Sequence[tuple[float, float]], limit: int) -> Sequence[tuple[float, float]]:
    """Keep every n-th point (and the last) so that at most about `limit` remain."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept
