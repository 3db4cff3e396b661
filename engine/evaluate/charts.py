"""Small inline-SVG charts for the report: lines per series and labelled scatter points.

Why not matplotlib: it is not installed in this venv and the report needs
two chart kinds only; SVG text inside ``index.html`` also keeps the report a
single self-contained page (besides the thumbnails) that opens anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 520, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 36, 52
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")

Point = tuple[float, float]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _range(values: Sequence[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    low, high = min(values), max(values)
    if math.isclose(low, high):
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return low - pad, high + pad


def _frame(
    title: str, x_label: str, y_label: str, x_range: tuple[float, float], y_range: tuple[float, float]
) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for tick in _ticks(*x_range):
        x = LEFT + (tick - x_range[0]) / (x_range[1] - x_range[0]) * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" stroke="#666"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" font-size="11" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(*y_range):
        y = TOP + plot_h - (tick - y_range[0]) / (y_range[1] - y_range[0]) * plot_h
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick:g}</text>')
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 12}" font-size="12" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="16" y="{TOP + plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    return parts


def _to_pixels(point: Point, x_range: tuple[float, float], y_range: tuple[float, float]) -> tuple[float, float]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x = LEFT + (point[0] - x_range[0]) / (x_range[1] - x_range[0]) * plot_w
    y = TOP + plot_h - (point[1] - y_range[0]) / (y_range[1] - y_range[0]) * plot_h
    return x, y


def line_chart(
    title: str,
    series: dict[str, list[Point]],
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
) -> str:
    """One polyline with dots per series, a legend on the right; empty series are left out."""
    series = {name: sorted(points) for name, points in series.items() if points}
    if not series:
        return empty_chart(title, "no data to plot")
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_range, y_range = _range(xs, None), _range(ys, y_range)
    parts = _frame(title, x_label, y_label, x_range, y_range)
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [_to_pixels(point, x_range, y_range) for point in points]
        if len(pixels) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pixels)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y), (vx, vy) in zip(pixels, points, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>{escape(name)}: '
                f"{vx:g}, {vy:.3g}</title></circle>"
            )
        legend_y = TOP + 12 + index * 16
        parts.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 24}" y="{legend_y}" font-size="11">{escape(name[:22])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def scatter_chart(
    title: str,
    points: list[tuple[float, float, str]],
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Labelled points (e.g. one per configuration); the label shows on hover and beside the dot."""
    if not points:
        return empty_chart(title, "no data to plot")
    x_range = _range([x for x, _, _ in points], None)
    y_range = _range([y for _, y, _ in points], y_range)
    parts = _frame(title, x_label, y_label, x_range, y_range)
    for index, (x_value, y_value, label) in enumerate(points):
        x, y = _to_pixels((x_value, y_value), x_range, y_range)
        colour = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" fill-opacity="0.8"><title>{escape(label)}: '
            f"{x_value:.3g}, {y_value:.3g}</title></circle>"
        )
        parts.append(f'<text x="{x + 6:.1f}" y="{y - 5:.1f}" font-size="10" fill="#333">{escape(label[:12])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def empty_chart(title: str, message: str) -> str:
    """A placeholder with the reason, so a missing chart is explained, not silently absent."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="80" viewBox="0 0 {WIDTH} 80" '
        f'role="img" aria-label="{escape(title)}"><rect width="{WIDTH}" height="80" fill="#fafafa" stroke="#ccc"/>'
        f'<text x="12" y="24" font-size="14" font-weight="bold">{escape(title)}</text>'
        f'<text x="12" y="52" font-size="12" fill="#a00">{escape(message)}</text></svg>'
    )
