"""Server-side chart geometry: bars scale to a readable axis, long lines are thinned."""

from __future__ import annotations

from modelyard.web import charts


def test_bars_carry_their_exact_values_and_fit_the_plot() -> None:
    chart = charts.grouped_bars(
        "Requests", ["a", "b"], [("ok", [3.0, 7.0]), ("failed", [1.0, None])]
    )
    assert [b.title for b in chart.bars] == ["a · ok: 3", "a · failed: 1", "b · ok: 7"]
    assert chart.y_ticks[-1].label == "10"  # 7 rounds up to an axis of 10
    bottom = charts.HEIGHT - charts.PAD_BOTTOM
    assert all(b.y >= charts.PAD_TOP and b.y + b.height <= bottom + 0.01 for b in chart.bars)


def test_a_chart_without_data_says_so() -> None:
    assert charts.grouped_bars("Requests", ["a"], [("ok", [0.0])]).empty
    assert charts.lines("loss", [("loss", [])]).empty


def test_long_lines_are_thinned_and_keep_their_last_point() -> None:
    points = [(float(i), 1.0 / (i + 1)) for i in range(5_000)]
    chart = charts.lines("loss", [("loss", points)])
    vertices = chart.lines[0][1].split()
    assert len(vertices) <= charts.MAX_LINE_POINTS + 1
    assert vertices[-1].startswith(f"{charts.WIDTH - charts.PAD_RIGHT}")
    assert chart.points == []  # too many vertices to mark each one
