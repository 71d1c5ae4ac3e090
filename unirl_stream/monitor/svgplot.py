"""Small inline SVG charts for the offline report: lines (with an optional band) and bars.

Inline ``<svg>`` in an HTML page needs no namespace URL, no script and no network; every
chart carries ``data-points`` (how many data points it draws) so a test can tell an
empty chart from a drawn one from the DOM alone.
"""

from __future__ import annotations

import math
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 56, 12, 24, 34
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

Series = tuple[list[float], list[float]]


def _finite(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _frame(title: str, xlabel: str, ylabel: str, xr: tuple[float, float],
           yr: tuple[float, float], points: int, body: list[str], legend: list[str]) -> str:
    def fmt(v: float) -> str:
        return f"{v:.4g}"

    axes = [
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#444"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#444"/>',
        f'<text x="{PAD_L - 4}" y="{H - PAD_B}" text-anchor="end">{fmt(yr[0])}</text>',
        f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">{fmt(yr[1])}</text>',
        f'<text x="{PAD_L}" y="{H - PAD_B + 14}">{fmt(xr[0])}</text>',
        f'<text x="{W - PAD_R}" y="{H - PAD_B + 14}" text-anchor="end">{fmt(xr[1])}</text>',
        f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text x="12" y="{(H - PAD_B + PAD_T) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {(H - PAD_B + PAD_T) / 2})">{escape(ylabel)}</text>',
        f'<text x="{PAD_L}" y="14" font-weight="bold">{escape(title)}</text>',
    ]
    keys = [f'<text x="{W - PAD_R}" y="{PAD_T + 12 * (i + 1)}" text-anchor="end" fill="{COLORS[i % 7]}">'
            f"{escape(name)}</text>" for i, name in enumerate(legend)]
    return (f'<svg class="plot" data-title="{escape(title)}" data-points="{points}" width="{W}" '
            f'height="{H}" viewBox="0 0 {W} {H}" font-size="10" font-family="sans-serif">'
            + "".join(axes + body + keys) + "</svg>")


def lines(title: str, series: dict[str, Series], xlabel: str, ylabel: str,
          band: tuple[list[float], list[float], list[float]] | None = None) -> str:
    """One polyline per series; ``band`` = (xs, low, high) drawn shaded behind them."""
    pts = {k: _finite(*v) for k, v in series.items()}
    allx = [x for p in pts.values() for x, _ in p]
    ally = [y for p in pts.values() for _, y in p]
    if band is not None:
        ally += [v for v in band[1] + band[2] if math.isfinite(v)]
    xr, yr = _span(allx), _span(ally)

    def sx(x: float) -> float:
        return PAD_L + (x - xr[0]) / (xr[1] - xr[0]) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - (y - yr[0]) / (yr[1] - yr[0]) * (H - PAD_T - PAD_B)

    body = []
    if band is not None:
        b = [(x, lo, hi) for x, lo, hi in zip(*band, strict=True) if math.isfinite(lo + hi)]
        poly = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in b] + \
               [f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(b)]
        body.append(f'<polygon class="band" points="{" ".join(poly)}" fill="{COLORS[0]}" opacity="0.2"/>')
    for i, p in enumerate(pts.values()):
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
        body.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS[i % 7]}" stroke-width="1.5"/>')
    return _frame(title, xlabel, ylabel, xr, yr, sum(len(p) for p in pts.values()), body, list(pts))


def bars(title: str, labels: list[str], counts: list[float], xlabel: str, ylabel: str) -> str:
    n = max(len(counts), 1)
    yr = (0.0, max(counts, default=0.0) or 1.0)
    slot = (W - PAD_L - PAD_R) / n
    body = []
    for i, (label, c) in enumerate(zip(labels, counts, strict=True)):
        h = c / yr[1] * (H - PAD_T - PAD_B)
        x = PAD_L + i * slot + slot * 0.1
        body.append(f'<rect x="{x:.1f}" y="{H - PAD_B - h:.1f}" width="{slot * 0.8:.1f}" '
                    f'height="{h:.1f}" fill="{COLORS[0]}"><title>{escape(label)}: {c:g}</title></rect>')
        body.append(f'<text x="{x + slot * 0.4:.1f}" y="{H - PAD_B + 24}" text-anchor="middle">'
                    f"{escape(label)} ({c:g})</text>")
    return _frame(title, xlabel, ylabel, (0.0, float(n)), yr, sum(1 for c in counts if c), body, [])
