"""SVG charts drawn by our code: stacked bars over time, horizontal bars of counts, and daily rates.

Each chart is a self-contained ``<svg>`` with a title and a description for screen readers; colours come from the
console's CSS (class ``s-<series>``), so the chart reads in light or dark alike. Every text is escaped here, since
the result is inserted into the page as markup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from markupsafe import Markup

from coherence_network.contract import TaskStatus

WIDTH, HEIGHT = 360, 180  # about the size a chart is shown at, so its 10 px text stays readable
LEFT, BOTTOM, TOP = 34, 20, 14


def _svg(title: str, description: str, body: Iterable[str], height: int = HEIGHT) -> Markup:
    parts = [(f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
             f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'),
             f"<title>{escape(title)}</title><desc>{escape(description)}</desc>", *body, "</svg>"]
    return Markup("".join(parts))


def _nice_max(value: float) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def _axis(top: float, plot_height: int, unit: str = "") -> list[str]:
    """Horizontal grid lines at 0, half and the top of the scale, labelled on the left."""
    lines = []
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_height * (1 - fraction)
        value = top * fraction
        text = f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        lines.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    return lines


def stacked_bars(rows: Sequence[Mapping[str, Any]], key: str, series: Sequence[str], title: str,
                 label: Callable[[str], str] = str, every: int = 3) -> Markup:
    """One bar per row, its ``series`` values stacked bottom-up; every ``every``-th bar labelled with
    ``label(row[key])``."""
    plot_height = HEIGHT - TOP - BOTTOM
    top = _nice_max(max((sum(int(row[s]) for s in series) for row in rows), default=0))
    slot = (WIDTH - LEFT) / max(len(rows), 1)
    body = _axis(top, plot_height)
    totals = {s: sum(int(row[s]) for row in rows) for s in series}
    for index, row in enumerate(rows):
        x, y = LEFT + index * slot + slot * 0.1, float(TOP + plot_height)
        for name in series:
            value = int(row[name])
            if value:
                height = plot_height * value / top
                y -= height
                body.append(f'<rect class="s-{escape(name)}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                            f'height="{height:.1f}"><title>{escape(str(row[key]))}: {value} {escape(name)}</title>'
                            "</rect>")
        if index % every == 0:
            body.append(f'<text class="tick" x="{x + slot * 0.4:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                        f"{escape(label(str(row[key])))}</text>")
    description = ", ".join(f"{totals[s]} {s}" for s in series) + f" over {len(rows)} bars"
    return _svg(title, description, body)


def horizontal_bars(values: Mapping[str, int], title: str) -> Markup:
    """One labelled bar per entry, scaled to the largest; the count written at the bar's end."""
    row_height, label_width = 24, 110
    height = TOP * 2 + row_height * max(len(values), 1)
    top = max(values.values(), default=0) or 1
    body = []
    for index, (name, value) in enumerate(values.items()):
        y = TOP + index * row_height
        width = (WIDTH - label_width - 40) * value / top
        body.append(f'<text class="tick" x="{label_width - 6}" y="{y + 17}" text-anchor="end">{escape(name)}</text>'
                    f'<rect class="s-{escape(name.split()[0])}" x="{label_width}" y="{y + 4}" width="{width:.1f}" '
                    f'height="{row_height - 8}"/><text class="value" x="{label_width + width + 6:.1f}" y="{y + 17}">'
                    f"{value}</text>")
    description = ", ".join(f"{name}: {value}" for name, value in values.items()) or "empty"
    return _svg(title, description, body, height)


def rate_bars(days: Sequence[Mapping[str, Any]], title: str) -> Markup:
    """Success rate per day as a bar from 0 to 100 %; a day with nothing finished says "none"."""
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT) / max(len(days), 1)
    body = _axis(100, plot_height, "%")
    for index, day in enumerate(days):
        x = LEFT + index * slot + slot * 0.15
        rate = day["success_rate"]
        finished = int(day[TaskStatus.COMPLETED]) + int(day[TaskStatus.FAILED])
        if rate is None:
            body.append(f'<text class="tick" x="{x + slot * 0.35:.1f}" y="{TOP + plot_height - 4}" '
                        'text-anchor="middle">none</text>')
        else:
            height = plot_height * rate
            body.append(f'<rect class="s-rate" x="{x:.1f}" y="{TOP + plot_height - height:.1f}" '
                        f'width="{slot * 0.7:.1f}" height="{height:.1f}"><title>{escape(str(day["day"]))}: '
                        f"{rate:.0%} of {finished}</title></rect>"
                        f'<text class="value" x="{x + slot * 0.35:.1f}" y="{TOP + plot_height - height - 3:.1f}" '
                        f'text-anchor="middle">{rate:.0%}</text>')
        body.append(f'<text class="tick" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                    f"{escape(str(day['day']))}</text>")
    described = [f"{d['day']}: {'none' if d['success_rate'] is None else format(d['success_rate'], '.0%')}"
                 for d in days]
    return _svg(title, ", ".join(described), body)
