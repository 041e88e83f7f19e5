"""Server-side chart geometry: bars scale to a readable axis, ticks are round, long lines are
thinned."""

from __future__ import annotations

import math

import pytest

from modelyard.web import charts


def test_bars_carry_their_exact_values_and_fit_the_plot() -> None:
    chart = charts.grouped_bars(
        "Requests", ["a", "b"], [("ok", [3.0, 7.0]), ("failed", [1.0, None])]
    )
    assert [b.title for b in chart.bars] == ["a · ok: 3", "a · failed: 1", "b · ok: 7"]
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8"]  # 7 rounds up to 8
    bottom = charts.HEIGHT - charts.PAD_BOTTOM
    assert all(b.y >= charts.PAD_TOP and b.y + b.height <= bottom + 0.01 for b in chart.bars)
    assert all(b.x >= 0 and b.x + b.width <= charts.WIDTH for b in chart.bars)


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0.0, 7.0, [0, 2, 4, 6, 8]),
        (5.75, 10.5, [4, 6, 8, 10, 12]),  # a metric chart's old ticks: 5.75 ... 10.5
        (1.0, 24.0, [0, 10, 20, 30]),
        (0.93, 0.99, [0.92, 0.94, 0.96, 0.98, 1.0]),
        (0.0, 0.3, [0.0, 0.1, 0.2, 0.3]),
        (-3.0, 2.0, [-4, -2, 0, 2]),
        (2.5, 2.5, [2, 3, 4, 5]),  # one value: an axis around it
    ],
)
def test_axis_ticks_are_round_numbers(low: float, high: float, ticks: list[float]) -> None:
    found = charts.nice_ticks(low, high)
    assert found == pytest.approx(ticks)
    assert len(found) <= charts.MAX_TICKS
    assert found[0] <= low
    assert found[-1] >= high
    step = found[1] - found[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9


def test_a_metric_chart_labels_its_axes_with_round_numbers() -> None:
    points = [(float(step), 5.75 + step * 0.2) for step in range(1, 25)]
    chart = charts.lines("loss", [("loss", points)], x_label="step ")
    assert [t.label for t in chart.x_ticks] == ["10", "20"]  # steps 1 to 24
    assert [t.label for t in chart.y_ticks] == ["4", "6", "8", "10", "12"]


def test_a_chart_without_data_says_so() -> None:
    assert charts.grouped_bars("Requests", ["a"], [("ok", [0.0])]).empty
    assert charts.lines("loss", [("loss", [])]).empty


def test_long_lines_are_thinned_and_keep_their_last_point() -> None:
    points = [(float(i), 1.0 / (i + 1)) for i in range(5_000)]
    chart = charts.lines("loss", [("loss", points)])
    vertices = chart.lines[0][1].split()
    assert len(vertices) <= charts.MAX_LINE_POINTS + 1
    assert float(vertices[-1].split(",")[0]) == charts.WIDTH
    assert chart.points == []  # too many vertices to mark each one
