"""What a search can minimise beside keeping its target accuracy: one :class:`Objective` per cost, by the name a
config gives it (``search.cost``) and ``pann pareto --x`` takes.

Each objective names the metric a trial reports and MLflow records, the axis label a front is drawn with, and its
direction. The runner, the progress line, the front and the records all read this table; adding a cost is one
entry here (plus the metric in :func:`cost_metrics`, if the network cost does not report it yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from pann.cost.network import NetworkCost


@dataclass(frozen=True)
class Objective:
    """``name``: the config's ``search.cost``; ``metric``: the trial's metric; ``label``: the axis label."""

    name: str
    metric: str
    label: str
    direction: str = "minimize"


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    # the mean precision over the activation layers (one alpha at granularity network)
    Objective("alpha", "precision_bits", "precision alpha (ReLU error B 2^-alpha)"),
    Objective("bootstraps", "bootstraps", "bootstraps per inference"),
    Objective("levels", "levels", "levels (network depth)"),
    Objective("latency", "latency_s", "estimated latency (s)"),
)}

# The network costs every trial reports (MLflow metrics of each trial; the front's points carry them).
COST_METRICS = ("bootstraps", "levels", "polynomial_levels", "multiplications", "latency_s")


def cost_metrics(cost: NetworkCost) -> dict[str, float]:
    """A network cost as the metrics of :data:`COST_METRICS`."""
    return {"bootstraps": cost.bootstraps, "levels": cost.levels, "polynomial_levels": cost.polynomial_levels,
            "multiplications": cost.multiplications, "latency_s": cost.latency}


def objective(name: str) -> Objective:
    """The objective ``name`` (``ValueError`` naming the known ones otherwise)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown cost {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
