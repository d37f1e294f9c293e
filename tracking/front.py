"""The feasible Pareto front of a precision search: pure maths on measured points (no MLflow, no files;
:mod:`tracking.front_export` writes and draws it).

Each measured :class:`Point` is one (trial, alpha) pair. Lower alpha means fewer bits in the ReLU
approximation (error ``B * 2^-alpha``), so it is cheaper: the front holds the feasible points
(accuracy at least the target) that no other feasible point beats in alpha and accuracy (and, on
request, multiplicative depth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pann.cost.objectives import OBJECTIVES, objective

__all__ = ["Point", "lowest_precision", "pareto_front"]


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
        """The point's value of the objective ``x`` (a name of :data:`pann.cost.objectives.OBJECTIVES`; alpha is
        the point's mean precision); ``ValueError`` for another name or a cost that was not measured."""
        if x not in OBJECTIVES:
            raise ValueError(f"unknown x axis {x!r}; expected one of {', '.join(OBJECTIVES)}")
        metric = objective(x).metric
        values = {OBJECTIVES["alpha"].metric: self.alpha, **self.costs}
        if metric not in values:
            raise ValueError(f"point of trial {self.trial} has no {x} recorded (a search without a cost model)")
        return values[metric]


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
