"""The report's charts, drawn by matplotlib and returned as inline SVG text.

Only what matplotlib does not offer is written here: the choice of series, the grid heatmap's panels, and
label placement for the scatter (labels never overlap each other or a point). Text stays text in the SVG
(`svg.fonttype: none`), which matplotlib XML-escapes; each chart's element ids are salted with its own name,
so several charts in one page never share an id.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display; before pyplot is imported anywhere (Optuna's plots import it)

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_BEST = "#d62728"
_OTHERS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"]
_WIDTH_IN = 7.5  # charts scale down to the page width (max-width: 100%); this is their full size


def to_svg(fig: Figure, name: str) -> str:
    """The figure as an `<svg>` element (no XML prolog), ids salted with `name`."""
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"qlora-sweep-{name}"}):
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def figure(height_in: float = 3.4, width_in: float = _WIDTH_IN) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)  # a renderer to measure text with
    return fig


def curves(series: dict[str, list[tuple[int, float]]], best: str | None, title: str, y_label: str) -> Figure:
    """Every trial's curve of one metric on shared axes; the best trial drawn thick and red."""
    fig = figure()
    ax = fig.add_subplot()
    order = sorted(series, key=lambda name: name == best)  # the best one last: on top
    for i, name in enumerate(order):
        steps, values = zip(*series[name])
        top = name == best
        ax.plot(steps, values, color=_BEST if top else _OTHERS[i % len(_OTHERS)], linewidth=2.6 if top else 1.2,
                alpha=1.0 if top else 0.75, marker="o" if len(steps) < 12 else None, markersize=3,
                label=f"{name} (best)" if top else name, zorder=3 if top else 2)
    ax.set(title=title, xlabel="optimizer step", ylabel=y_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def heatmap(panels: list[tuple[str, list[list[tuple[float, str] | None]]]], x_key: str, x_values: list,
            y_key: str, y_values: list, metric: str) -> Figure:
    """One panel per value of the other swept keys; each cell its metric and the text under it (interval).
    `panels`: (panel title, rows[y][x] of (value, text) or None for a missing or failed trial)."""
    values = [cell[0] for _, grid in panels for row in grid for cell in row if cell]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    cell_in = 1.15  # wide enough for "12.34" over "[10.1, 14.5]" at 8 pt
    fig = figure(height_in=1.3 + 0.8 * len(y_values), width_in=1.6 + (cell_in * len(x_values) + 0.5) * len(panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (title, grid)) in enumerate(zip(axes, panels)):
        shown = [[cell[0] if cell else math.nan for cell in row] for row in grid]
        image = ax.imshow(shown, cmap="viridis", vmin=low, vmax=high if high > low else low + 1, aspect="auto")
        for y, row in enumerate(grid):
            for x, cell in enumerate(row):
                text = "n/a" if cell is None else f"{cell[0]:.2f}\n{cell[1]}".strip()
                dark = cell is not None and (cell[0] - low) / ((high - low) or 1) < 0.55
                ax.text(x, y, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(x_values)), [str(v) for v in x_values])
        ax.set_yticks(range(len(y_values)), [str(v) for v in y_values] if i == 0 else [])
        ax.set(title=title, xlabel=x_key, ylabel=y_key if i == 0 else "")
    fig.colorbar(image, ax=list(axes), label=metric, shrink=0.9)
    return fig


def scatter(points: list[tuple[float, float, str, bool]], x_label: str, y_label: str) -> tuple[Figure, list]:
    """(x, y, label, best) points with labels placed so that none overlaps another label or a point; returns
    the figure and its label artists (for checking)."""
    fig = figure(height_in=4.0)
    ax = fig.add_subplot()
    for x, y, _, best in points:
        ax.scatter([x], [y], s=36 if best else 22, color=_BEST if best else _OTHERS[0], zorder=3)
    ax.set(xlabel=x_label, ylabel=y_label, title=f"{y_label} against {x_label}")
    ax.grid(alpha=0.3)
    _pad_limits(ax, points)
    labels = place_labels(ax, [(x, y, label) for x, y, label, _ in points])
    return fig, labels


def _pad_limits(ax, points) -> None:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    for setter, low, high in ((ax.set_xlim, min(xs), max(xs)), (ax.set_ylim, min(ys), max(ys))):
        span = (high - low) or abs(high) or 1.0
        setter(low - 0.25 * span, high + 0.25 * span)  # room for labels on every side


# Candidate label positions around a point, in points (1/72 in): near first, then further out.
_OFFSETS = [(dx * r, dy * r) for r in (7, 14, 24, 36, 52, 72)
            for dx, dy in ((1, 0.4), (1, -1), (-1, 0.4), (-1, -1), (0, 1.2), (0, -1.6), (1, 1.2), (-1, 1.2))]


def place_labels(ax, points: list[tuple[float, float, str]]) -> list:
    """Annotate each point at the first candidate offset whose text box overlaps no placed label, no point
    and stays inside the axes; the least-overlapping candidate if none is free. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_points = 72 / fig.dpi
    frame = ax.get_window_extent(renderer)
    dots = [_box_around(ax.transData.transform((x, y)), 5) for x, y, _ in points]
    taken: list[tuple[float, float, float, float]] = []
    placed = []
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        at = ax.transData.transform((x, y))
        probe = ax.text(0, 0, text, fontsize=8)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        best, best_cost = None, math.inf
        for dx, dy in _OFFSETS:
            box = _label_box(at, dx / to_points, dy / to_points, extent.width, extent.height)
            cost = sum(_overlap(box, other) for other in taken + dots) + _outside(box, frame)
            if cost < best_cost:
                best, best_cost = (dx, dy, box), cost
            if cost == 0:
                break
        dx, dy, box = best
        taken.append(box)
        far = math.hypot(dx, dy) > 10
        placed.append(ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                                  ha="left" if dx >= 0 else "right", va="center",
                                  arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6} if far else None))
    return placed


def _label_box(at, dx_px: float, dy_px: float, width: float, height: float) -> tuple[float, float, float, float]:
    """The box of a label anchored at `at` + offset, left-aligned to the right of it, right-aligned to the left."""
    x = at[0] + dx_px
    left = x if dx_px >= 0 else x - width
    y = at[1] + dy_px
    return left, y - height / 2, left + width, y + height / 2


def _box_around(at, radius: float) -> tuple[float, float, float, float]:
    return at[0] - radius, at[1] - radius, at[0] + radius, at[1] + radius


def _overlap(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _outside(box, frame) -> float:
    """Area of `box` outside the axes frame (a label may not leave the chart)."""
    inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
    return (box[2] - box[0]) * (box[3] - box[1]) - inside

