"""Charts as inline SVG text for the status page: no I/O, no JavaScript, no external
assets (presentation attributes only, so a strict Content-Security-Policy allows them).

`line_chart` draws one line with its data points per series over a time axis;
`bar_chart` draws labelled horizontal bars. Every label is escaped; every point carries
a <title> (a browser shows it on hover, without scripts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# colour-blind safe (Okabe-Ito), assigned to series in sorted order
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _fmt(v: float) -> str:
    """A tick label: short, no needless decimals."""
    if v == 0:
        return "0"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}"
    return f"{v:.2g}"


def nice_max(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above v (an axis top)."""
    if not math.isfinite(v) or v <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _clock(t: float, seconds: bool = False) -> str:
    """HH:MM or HH:MM:SS (UTC) of an epoch time, without the time module (pure and deterministic)."""
    s = int(t // 1) % (24 * 3600)
    hm = f"{s // 3600:02d}:{s // 60 % 60:02d}"
    return f"{hm}:{s % 60:02d}" if seconds else hm


def time_range(series: dict[str, Sequence[Sequence[float]]], start: float, end: float, least: float = 60.0) -> tuple[float, float]:
    """The x axis of a line chart: from the first point within [start, end] (less a
    margin) to `end`, at least `least` seconds wide, never before `start`; so a burst of
    a few seconds is spread out, not a single stroke at the right edge of an hour."""
    first = min((t for pts in series.values() for t, _ in pts if start <= t <= end), default=start)
    span = max(least, (end - first) * 1.05)
    return max(start, end - span), end


def line_chart(
    series: dict[str, Sequence[Sequence[float]]],
    *,
    title: str,
    unit: str,
    start: float,
    end: float,
    width: int = 520,
    height: int = 220,
) -> str:
    """One polyline with circles per series of (epoch seconds, value) points between
    `start` and `end` (UTC clock ticks on the x axis); values from 0 up."""
    start, end = time_range(series, start, end)
    left, right, top = 48, 28, 26
    plot_w, plot_h = width - left - right, height - top - 46
    total_h = height + 14 * ((len(series) + 2) // 3)
    span = max(end - start, 1e-9)
    points = [(t, v) for pts in series.values() for t, v in pts if start <= t <= end and math.isfinite(v)]
    top_v = nice_max(max((v for _, v in points), default=0.0))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}" {FONT}>',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{total_h}" fill="#fff"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#222">{escape(title)}</text>',
    ]
    for i in range(5):  # horizontal grid lines and the y axis labels
        v = top_v * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{escape(_fmt(v))}</text>')
    for i in range(5):  # x axis ticks
        t = start + span * i / 4
        x = left + plot_w * i / 4
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#999"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">{_clock(t, span < 600)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>')
    out.append(f'<text x="{left + plot_w}" y="{top + plot_h + 30}" text-anchor="end" fill="#555">UTC; {escape(unit)}</text>')
    if not points:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" fill="#888">no data in this window</text>')
    for n, name in enumerate(sorted(series)):
        colour = PALETTE[n % len(PALETTE)]
        pts = sorted((t, v) for t, v in series[name] if start <= t <= end and math.isfinite(v))
        xy = [(left + plot_w * (t - start) / span, top + plot_h - plot_h * min(v, top_v) / top_v, t, v) for t, v in pts]
        if len(xy) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in xy)
            out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y, t, v in xy:
            out.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                       f"<title>{escape(name)} {_clock(t, True)} UTC: {escape(_fmt(v))} {escape(unit)}</title></circle>")  # fmt: skip
        lx = left + (n % 3) * (plot_w / 3)
        ly = height + 14 * (n // 3) - 6
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14:.1f}" y="{ly + 1}" fill="#222">{escape(name)} ({len(xy)})</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, unit: str, width: int = 520) -> str:
    """One horizontal bar per (label, value), in the order given."""
    left, right, row = 170, 60, 22
    height = 34 + row * max(1, len(bars))
    plot_w = width - left - right
    top_v = max((v for _, v in bars if math.isfinite(v)), default=0.0) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="8" y="16" font-size="13" font-weight="600" fill="#222">{escape(title)}</text>',
    ]
    if not bars:
        out.append(f'<text x="{left}" y="42" fill="#888">none</text>')
    for i, (label, value) in enumerate(bars):
        y = 28 + row * i
        w = plot_w * max(0.0, value) / top_v if math.isfinite(value) else 0.0
        shown = label if len(label) <= 28 else label[:27] + "…"
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" fill="#222">{escape(shown)}</text>')
        out.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 6}" fill="#d55e00">'
                   f"<title>{escape(label)}: {escape(_fmt(value))} {escape(unit)}</title></rect>")  # fmt: skip
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" fill="#222">{escape(_fmt(value))}</text>')
    out.append("</svg>")
    return "\n".join(out)
