"""Charts as geometry for inline SVG, computed on the server: no chart library, no script."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 640
HEIGHT = 200
PAD_LEFT = 44
PAD_RIGHT = 8
PAD_TOP = 10
PAD_BOTTOM = 28
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
class Tick:
    position: float
    label: str


@dataclass
class Chart:
    """Everything the `chart` macro draws: bars or polylines, axis ticks, a legend."""

    title: str
    legend: list[str]
    bars: list[Bar] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (series, "x,y x,y ...")
    points: list[Bar] = field(default_factory=list)  # line vertices, as tiny bars with a title
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    empty: bool = False
    summary: str = ""  # for screen readers


def _nice_max(value: float) -> float:
    """Round a maximum up to 1, 2 or 5 times a power of ten, so axis labels read well."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _fmt(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def _y_ticks(top: float, unit: str = "") -> list[Tick]:
    plot = HEIGHT - PAD_TOP - PAD_BOTTOM
    return [
        Tick(position=PAD_TOP + plot * (1 - i / 4), label=_fmt(top * i / 4) + unit)
        for i in range(5)
    ]


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
    top = _nice_max(max(values, default=0.0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.8 / max(len(series), 1), 1.0)
    every = max(1, -(-len(labels) // max_labels))
    for i, label in enumerate(labels):
        left = PAD_LEFT + i * slot + slot * 0.1
        for s, (name, vs) in enumerate(series):
            value = vs[i]
            if value is None:
                continue
            h = plot_h * value / top
            chart.bars.append(
                Bar(
                    x=round(left + s * bar_w, 2),
                    y=round(PAD_TOP + plot_h - h, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    series=s,
                    title=f"{label} · {name}: {_fmt(value)}{unit}",
                )
            )
        if i % every == 0:
            chart.x_ticks.append(Tick(position=round(PAD_LEFT + (i + 0.5) * slot, 2), label=label))
    chart.y_ticks = _y_ticks(top, unit)
    totals = ", ".join(f"{name} {_fmt(sum(v or 0 for v in vs))}" for name, vs in series)
    chart.summary = f"{title}: {totals}"
    return chart


def lines(
    title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, x_label: str = ""
) -> Chart:
    """One polyline per series of (x, y) points, on shared axes."""
    chart = Chart(title=title, legend=[name for name, _ in series])
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    chart.empty = not xs
    if chart.empty:
        return chart
    x_min, x_max = min(xs), max(xs)
    y_min, y_max = min(0.0, min(ys)), _nice_max(max(ys)) if max(ys) > 0 else 1.0
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    span_x = (x_max - x_min) or 1.0
    span_y = (y_max - y_min) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            round(PAD_LEFT + plot_w * (x - x_min) / span_x, 2),
            round(PAD_TOP + plot_h * (1 - (y - y_min) / span_y), 2),
        )

    for s, (name, all_pts) in enumerate(series):
        pts = _thin(all_pts, MAX_LINE_POINTS)
        placed = [at(x, y) for x, y in pts]
        chart.lines.append((s, " ".join(f"{px},{py}" for px, py in placed)))
        if len(pts) > MAX_MARKED_POINTS:
            continue
        for (x, y), (px, py) in zip(pts, placed, strict=True):
            chart.points.append(
                Bar(px - 2, py - 2, 4, 4, s, f"{name} @ {x_label}{_fmt(x)}: {_fmt(y)}")
            )
    for i in range(5):
        x = x_min + span_x * i / 4
        chart.x_ticks.append(Tick(position=at(x, y_min)[0], label=_fmt(round(x, 2))))
    chart.y_ticks = [
        Tick(position=PAD_TOP + plot_h * (1 - i / 4), label=_fmt(y_min + span_y * i / 4))
        for i in range(5)
    ]
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
