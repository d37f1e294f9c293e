"""Reading a search's MLflow records: find a search's parent run, its measured points, what a rerun would
discard; and discarding them (MLflow's soft delete)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pann.cost.objectives import COST_METRICS, OBJECTIVES
from tracking.front import Point
from tracking.schema import CURVE_ACCURACY, CURVE_PREFIX, SEARCH_TAG, TRIAL_TAG

__all__ = ["find_search", "finished_search", "recorded_search", "search_parent_run", "trial_points"]

_ALPHA = OBJECTIVES["alpha"].metric  # a trial's mean precision


def find_search(client: MlflowClient, name: str) -> str:
    """The parent run id of search ``name`` in any experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{SEARCH_TAG}` = '{name}'") if experiments else []
    if not runs:
        raise ValueError(f"no search named {name!r} in {client.tracking_uri}")
    if len(runs) > 1:  # the same name in several experiments: which one is meant is the user's to say
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        found = ", ".join(f"experiment {names.get(r.info.experiment_id, r.info.experiment_id)!r}: run "
                          f"{r.info.run_id}" for r in runs)
        raise ValueError(f"search {name!r} is recorded {len(runs)} times ({found}); choose one with --run-id")
    return runs[0].info.run_id


def _curve_points(client: MlflowClient, run) -> list[Point]:
    histories = {name.removeprefix(CURVE_PREFIX): {m.step: m.value for m in client.get_metric_history(
        run.info.run_id, name)} for name in run.data.metrics if name.startswith(CURVE_PREFIX)}
    accuracy = histories.pop("accuracy", {})
    depths = histories.pop("depth", {})
    return [Point(trial=run.data.tags.get(TRIAL_TAG, run.info.run_id), alpha=float(step), accuracy=value,
                  depth=int(depths.get(step, 0)), run_id=run.info.run_id, params={**run.data.params, "alpha": step},
                  costs={k: h[step] for k, h in histories.items() if k in COST_METRICS and step in h})
            for step, value in sorted(accuracy.items())]


def search_parent_run(client: MlflowClient, run_id: str):
    """The run ``run_id``, which must be the parent run of a search (else ``ValueError``, one line)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ValueError(f"no run {run_id!r} in {client.tracking_uri}") from None
    if SEARCH_TAG not in run.data.tags:
        raise ValueError(f"run {run_id!r} is not the parent run of a search (no {SEARCH_TAG} tag)")
    return run


def trial_points(client: MlflowClient, parent_id: str) -> list[Point]:
    """Every measured point of a search's FINISHED child runs: the (trial, alpha) points of their curve
    histories, or, for a per-layer trial, its one point (mean alpha) from its final metrics.

    Raises ``ValueError`` when ``parent_id`` is not the parent run of a search in this store.
    """
    parent = search_parent_run(client, parent_id)
    points = []
    for run in client.search_runs([parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'"
                                  " and attributes.status = 'FINISHED'"):
        if CURVE_ACCURACY in run.data.metrics:
            points += _curve_points(client, run)
            continue
        metrics = run.data.metrics
        if "accuracy" not in metrics or _ALPHA not in metrics:
            continue
        points.append(Point(trial=run.data.tags.get(TRIAL_TAG, run.info.run_id), alpha=metrics[_ALPHA],
                            accuracy=metrics["accuracy"], depth=int(metrics.get("depth", 0)), run_id=run.info.run_id,
                            params=dict(run.data.params),
                            costs={k: metrics[k] for k in COST_METRICS if k in metrics}))
    return points


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def _parent_runs(uri: str, experiment: str, name: str) -> tuple[MlflowClient | None, str | None, list]:
    """Read only (a sqlite store that is not there is not created): a client, the experiment's id and the parent
    runs of search ``name`` in ``experiment`` (none when either is missing)."""
    if not _store_exists(uri):
        return None, None, []
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, None, []
    return client, found.experiment_id, client.search_runs([found.experiment_id], f"tags.`{SEARCH_TAG}` = '{name}'")


def recorded_search(uri: str, experiment: str, name: str) -> tuple[list[str], int] | None:
    """Read only: the run ids of search ``name`` in ``experiment`` (its parent first, then its trials' runs) and
    how many trial runs FINISHED; None if none."""
    client, experiment_id, parents = _parent_runs(uri, experiment, name)
    if not parents:
        return None
    children = [r for p in parents for r in client.search_runs(
        [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{p.info.run_id}'")]
    finished = sum(r.info.status == RunStatus.to_string(RunStatus.FINISHED) for r in children)
    return [r.info.run_id for r in parents + children], finished


def finished_search(uri: str, experiment: str, name: str) -> str | None:
    """Read only: the parent run id of search ``name`` in ``experiment`` when that search ran to its end (its parent
    run FINISHED, its answer recorded); None otherwise."""
    done = [r for r in _parent_runs(uri, experiment, name)[2] if r.info.status == RunStatus.to_string(RunStatus.FINISHED)]
    return done[0].info.run_id if done else None
