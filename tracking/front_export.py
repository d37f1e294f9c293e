"""A search's front exported as CSV, JSON, PNG or HTML (an interactive plotly figure drawn by Optuna's
Pareto-front plot, self-contained), by the suffix of the file asked for."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from pann.cost.objectives import objective
from pann.files import write_bytes_atomic
from tracking.front import Point, pareto_front

__all__ = ["FORMATS", "export_front"]

Y_LABEL = "validation accuracy (%)"


def _x_label(x: str) -> str:
    return objective(x).label


def _csv(front: list[Point], points: Sequence[Point], target: float, title: str,
         with_depth: bool, x: str = "alpha") -> bytes:
    keys = sorted({k for p in front for k in p.params})
    costs = sorted({k for p in front for k in p.costs})
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["trial", "alpha", "accuracy", "depth"] + costs + ["run_id"] + [f"param.{k}" for k in keys])
    for p in front:
        writer.writerow([p.trial, p.alpha, p.accuracy, p.depth] + [p.costs.get(k, "") for k in costs]
                        + [p.run_id or ""] + [p.params.get(k, "") for k in keys])
    return out.getvalue().encode()


def _json(front: list[Point], points: Sequence[Point], target: float, title: str,
          with_depth: bool, x: str = "alpha") -> bytes:
    rows = [{"trial": p.trial, "alpha": p.alpha, "accuracy": p.accuracy, "depth": p.depth, "costs": dict(p.costs),
             "run_id": p.run_id, "params": dict(p.params)} for p in front]
    return json.dumps({"target": target, "x": x, "front": rows, "points": len(points)}, indent=2,
                      default=str).encode()


def _png(front: list[Point], points: Sequence[Point], target: float, title: str,
         with_depth: bool, x: str = "alpha") -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no display and no global backend needed

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([p.cost(x) for p in points], [100 * p.accuracy for p in points], color="0.7", s=16,
               label="measured")
    ax.step([p.cost(x) for p in front], [100 * p.accuracy for p in front], where="post", marker="o",
            color="tab:red", label="Pareto front")
    ax.axhline(100 * target, color="0.3", linestyle="--", linewidth=1, label=f"target {100 * target:g}%")
    ax.set(xlabel=_x_label(x), ylabel=Y_LABEL, title=title)
    ax.legend(loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _study(points: Sequence[Point], target: float, with_depth: bool, x: str = "alpha"):
    """An in-memory Optuna study holding ``points`` as trials, so that Optuna's plots can draw them.

    Values: alpha (minimised), accuracy in % (maximised)[, depth (minimised)]; the constraint
    ``target - accuracy <= 0`` marks the feasible points; user attributes carry the trial and MLflow run.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(directions=["minimize", "maximize"] + ["minimize"] * with_depth)
    for p in points:
        params = {k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for k, v in p.params.items()}
        study.add_trial(optuna.trial.create_trial(
            values=[p.cost(x), 100 * p.accuracy] + [p.depth] * with_depth, params=params,
            distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
            user_attrs={"trial": p.trial, "mlflow_run_id": p.run_id or "", "depth": p.depth, "alpha": p.alpha,
                        **dict(p.costs)},
            constraints={"target_accuracy": target - p.accuracy}))
    return study


def _html(front: list[Point], points: Sequence[Point], target: float, title: str, with_depth: bool,
          x: str = "alpha") -> bytes:
    """Optuna's Pareto-front plot of ``points`` (hover: values, parameters, MLflow run id) with the
    front as a line and the target, as one HTML page with plotly.js embedded, so it opens offline."""
    import optuna

    # Optuna warns when no point is feasible; the page says so itself (0 front points, the target line).
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        figure = optuna.visualization.plot_pareto_front(
            _study(points, target, with_depth, x), target_names=[_x_label(x), Y_LABEL],
            targets=lambda trial: trial.values[:2])  # drawn in 2-D; depth, if an objective, still picks the best
    finally:
        optuna.logging.set_verbosity(verbosity)
    figure.add_scatter(x=[p.cost(x) for p in front], y=[100 * p.accuracy for p in front], mode="lines",
                       line={"shape": "hv", "color": "crimson"}, name="Pareto front", hoverinfo="skip")
    figure.add_hline(y=100 * target, line_dash="dash", line_color="grey",
                     annotation_text=f"target {100 * target:g}%", annotation_position="top right")
    figure.update_layout(title=html.escape(title or "Pareto front") + f"<br><sub>{len(front)} front points of "
                         f"{len(points)} measured; target accuracy {100 * target:g}%</sub>")
    page = figure.to_html(include_plotlyjs=True, full_html=True)
    return page.encode()


FORMATS: dict[str, Callable[[list[Point], Sequence[Point], float, str, bool, str], bytes]] = {
    ".csv": _csv, ".json": _json, ".png": _png, ".html": _html}


def export_front(path: str | Path, points: Sequence[Point], target: float, title: str = "",
                 with_depth: bool = False, x: str = "alpha") -> list[Point]:
    """Write the front of ``points`` to ``path`` in the format its suffix names (.csv, .json, .png, .html).

    The file is replaced atomically, parent folders are created. Returns the front.
    """
    path = Path(path)
    writer = FORMATS.get(path.suffix)
    if writer is None:
        raise ValueError(f"cannot export to {path.suffix or 'a name without suffix'!r} ({path}); "
                         f"allowed: {', '.join(FORMATS)}")
    front = pareto_front(points, target, with_depth, x)
    data = writer(front, points, target, title, with_depth, x)
    write_bytes_atomic(path, data)
    return front
