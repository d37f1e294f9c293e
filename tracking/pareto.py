"""The feasible Pareto front of a precision search, and its export as CSV, JSON, PNG or HTML.

Each measured :class:`Point` is one (trial, alpha) pair. Lower alpha means fewer bits in the ReLU
approximation (error ``B * 2^-alpha``), so it is cheaper: the front holds the feasible points
(accuracy at least the target) that no other feasible point beats in alpha and accuracy (and, on
request, multiplicative depth).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pann.files import write_bytes_atomic

X_LABEL = "precision alpha (ReLU error B 2^-alpha)"
Y_LABEL = "validation accuracy (%)"


# What a front can be drawn against: alpha (the mean over layers for a per-layer point) or a network cost.
X_AXES = {"alpha": "alpha", "bootstraps": "bootstraps", "levels": "levels", "latency": "latency_s"}


@dataclass(frozen=True)
class Point:
    """One measurement: a trial's validation accuracy at precision ``alpha`` (the mean over layers for a
    per-layer point), with its network costs (``bootstraps``, ``levels``, ``latency_s``...) when known."""

    trial: str
    alpha: float
    accuracy: float
    depth: int
    run_id: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=dict)

    def cost(self, x: str) -> float:
        """The point's value on axis ``x`` (one of :data:`X_AXES`); ``ValueError`` when it was not measured."""
        if x not in X_AXES:
            raise ValueError(f"unknown x axis {x!r}; expected one of {', '.join(X_AXES)}")
        if x == "alpha":
            return self.alpha
        if X_AXES[x] not in self.costs:
            raise ValueError(f"point of trial {self.trial} has no {x} recorded (a search without a cost model)")
        return self.costs[X_AXES[x]]


def _check_target(target: float) -> None:
    if not 0 < target <= 1:
        raise ValueError(f"target accuracy must be in (0, 1], got {target!r}")


def _objectives(point: Point, with_depth: bool, x: str = "alpha") -> tuple[float, ...]:
    """The point's objectives, all to be minimised."""
    cost = point.cost(x)
    return (cost, -point.accuracy, point.depth) if with_depth else (cost, -point.accuracy)


def pareto_front(points: Sequence[Point], target: float, with_depth: bool = False, x: str = "alpha") -> list[Point]:
    """Feasible points (accuracy >= target) not dominated in (``x`` min, accuracy max[, depth min]).

    Sorted by ``x``, then by decreasing accuracy. Of points with equal objectives the first is kept.
    """
    _check_target(target)
    feasible = sorted((p for p in points if p.accuracy >= target), key=lambda p: _objectives(p, with_depth, x))
    front: list[Point] = []
    for point in feasible:  # a point's dominators sort before it, and one of them is on the front
        mine = _objectives(point, with_depth, x)
        if not any(all(t <= m for t, m in zip(_objectives(q, with_depth, x), mine)) for q in front):
            front.append(point)
    return front


def lowest_precision(points: Sequence[Point], target: float, x: str = "alpha") -> Point | None:
    """The feasible point with the lowest ``x``; ties go to higher accuracy, then lower alpha and depth.
    None if none."""
    _check_target(target)
    feasible = [p for p in points if p.accuracy >= target]
    return min(feasible, key=lambda p: (p.cost(x), -p.accuracy, p.alpha, p.depth), default=None)


def _csv(front: list[Point], points: Sequence[Point], target: float, title: str) -> bytes:
    keys = sorted({k for p in front for k in p.params})
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["trial", "alpha", "accuracy", "depth", "run_id"] + [f"param.{k}" for k in keys])
    for p in front:
        writer.writerow([p.trial, p.alpha, p.accuracy, p.depth, p.run_id or ""] + [p.params.get(k, "") for k in keys])
    return out.getvalue().encode()


def _json(front: list[Point], points: Sequence[Point], target: float, title: str) -> bytes:
    rows = [{"trial": p.trial, "alpha": p.alpha, "accuracy": p.accuracy, "depth": p.depth, "run_id": p.run_id,
             "params": dict(p.params)} for p in front]
    return json.dumps({"target": target, "front": rows, "points": len(points)}, indent=2, default=str).encode()


def _png(front: list[Point], points: Sequence[Point], target: float, title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no display and no global backend needed

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([p.alpha for p in points], [100 * p.accuracy for p in points], color="0.7", s=16, label="measured")
    ax.step([p.alpha for p in front], [100 * p.accuracy for p in front], where="post", marker="o",
            color="tab:red", label="Pareto front")
    ax.axhline(100 * target, color="0.3", linestyle="--", linewidth=1, label=f"target {100 * target:g}%")
    ax.set(xlabel=X_LABEL, ylabel=Y_LABEL, title=title)
    ax.legend(loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _span(values: list[float]) -> tuple[float, float]:
    """The range of ``values``, widened when it is a single value."""
    lo, hi = min(values), max(values)
    return (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)


def _html(front: list[Point], points: Sequence[Point], target: float, title: str) -> bytes:
    width, height, margin = 720, 420, 60
    x0, x1 = _span([p.alpha for p in points] or [0.0])
    y0, y1 = _span([100 * p.accuracy for p in points] + [100 * target])

    def x(alpha: float) -> float:
        return margin + (alpha - x0) / (x1 - x0) * (width - 2 * margin)

    def y(percent: float) -> float:
        return height - margin - (percent - y0) / (y1 - y0) * (height - 2 * margin)

    def tooltip(p: Point) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(p.params.items()))
        return html.escape(f"{p.trial}: alpha {p.alpha:g}, accuracy {100 * p.accuracy:.2f}%, depth {p.depth}\n{params}")

    left, bottom, right, top = margin, height - margin, width - margin, margin
    svg = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{top}" stroke="black"/>']
    for i in range(6):
        a, v = x0 + i * (x1 - x0) / 5, y0 + i * (y1 - y0) / 5
        svg.append(f'<line x1="{x(a):.1f}" y1="{bottom}" x2="{x(a):.1f}" y2="{bottom + 5}" stroke="black"/>'
                   f'<text x="{x(a):.1f}" y="{bottom + 18}" text-anchor="middle">{a:.3g}</text>'
                   f'<line x1="{left - 5}" y1="{y(v):.1f}" x2="{left}" y2="{y(v):.1f}" stroke="black"/>'
                   f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    svg.append(f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">{X_LABEL}</text>'
               f'<text transform="translate(16 {height / 2}) rotate(-90)" text-anchor="middle">{Y_LABEL}</text>')
    svg.append(f'<line x1="{left}" y1="{y(100 * target):.1f}" x2="{right}" y2="{y(100 * target):.1f}" '
               f'stroke="grey" stroke-dasharray="6 4"/>'
               f'<text x="{right}" y="{y(100 * target) - 4:.1f}" text-anchor="end">target {100 * target:g}%</text>')
    path = " ".join(f"{x(p.alpha):.1f},{y(100 * p.accuracy):.1f}" for p in front)
    svg.append(f'<polyline points="{path}" fill="none" stroke="crimson"/>')
    on_front = {id(p) for p in front}
    for p in sorted(points, key=lambda p: id(p) in on_front):  # front points drawn last, on top
        colour, r = ("crimson", 5) if id(p) in on_front else ("#aaa", 3.5)
        svg.append(f'<circle cx="{x(p.alpha):.1f}" cy="{y(100 * p.accuracy):.1f}" r="{r}" fill="{colour}">'
                   f'<title>{tooltip(p)}</title></circle>')
    rows = "".join(f"<tr><td>{html.escape(p.trial)}</td><td>{p.alpha:g}</td><td>{100 * p.accuracy:.2f}</td>"
                   f"<td>{p.depth}</td><td>{html.escape(p.run_id or '')}</td>"
                   f"<td>{html.escape(json.dumps(dict(p.params), default=str))}</td></tr>" for p in front)
    heading = html.escape(title or "Pareto front")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{heading}</title><style>'
            "body{font-family:sans-serif} td,th{padding:2px 8px;border-bottom:1px solid #ddd} svg{font-size:12px}"
            f"</style></head><body><h1>{heading}</h1>"
            f"<p>{len(front)} front points of {len(points)} measured; target accuracy {100 * target:g}%.</p>"
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(svg)}</svg>'
            "<table><tr><th>trial</th><th>alpha</th><th>accuracy (%)</th><th>depth</th><th>run id</th>"
            f"<th>params</th></tr>{rows}</table></body></html>\n")
    return page.encode()


_WRITERS: dict[str, Callable[[list[Point], Sequence[Point], float, str], bytes]] = {
    ".csv": _csv, ".json": _json, ".png": _png, ".html": _html}


def export_front(path: str | Path, points: Sequence[Point], target: float, title: str = "",
                 with_depth: bool = False, x: str = "alpha") -> list[Point]:
    """Write the front of ``points`` to ``path`` in the format its suffix names (.csv, .json, .png, .html).

    The file is replaced atomically, parent folders are created. Returns the front.
    """
    path = Path(path)
    writer = _WRITERS.get(path.suffix)
    if writer is None:
        raise ValueError(f"cannot export to {path.suffix or 'a name without suffix'!r} ({path}); "
                         f"allowed: {', '.join(_WRITERS)}")
    front = pareto_front(points, target, with_depth, x)
    data = writer(front, points, target, title)
    write_bytes_atomic(path, data)
    return front
