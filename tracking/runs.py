"""MLflow records of a search: one parent run per search, one nested child run per trial.

Runs are found again by tags (``pann.search`` on the parent, ``pann.trial_id`` on each child), so a
resumed search reuses its runs instead of opening duplicates. Everything goes through an explicit
:class:`mlflow.MlflowClient`, never MLflow's global active run, because the driver records many trials
at once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from tracking.pareto import Point
from tracking.stores import (TrackingUnavailable, artifact_location, check_reachable,  # noqa: F401 (re-exported)
                            default_tracking_uri)

SEARCH_TAG = "pann.search"
TRIAL_TAG = "pann.trial_id"
BACKBONE_TAG = "pann.backbone"
ERROR_TAG = "pann.error"
CURVE_PREFIX = "curve_"  # metric histories with step = alpha: the accuracy-vs-alpha curve and its costs
CURVE_ACCURACY = "curve_accuracy"
COST_METRICS = ("bootstraps", "levels", "polynomial_levels", "multiplications", "latency_s")


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in values.items()}


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class SearchRecorder:
    """The MLflow side of one search."""

    def __init__(self, tracking_uri: str, experiment: str):
        check_reachable(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            self.experiment_id = self.client.create_experiment(experiment,
                                                               artifact_location=artifact_location(tracking_uri))
        self.parent_id: str | None = None
        self._trial_runs: dict[str, str] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}  # run id -> (metric, step) pairs it holds
        self._done: set[str] = set()  # trials whose run had FINISHED: a resumed search may run them again

    def _find(self, tags: Mapping[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], query)

    def search_exists(self, name: str) -> bool:
        return bool(self._find({SEARCH_TAG: name}))

    def start_search(self, name: str, params: Mapping[str, Any]) -> str:
        """Open the parent run of search ``name``, or reopen it with its trials' runs when it exists."""
        runs = self._find({SEARCH_TAG: name})
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._trial_runs = {r.data.tags[TRIAL_TAG]: r.info.run_id
                                for r in self._find({MLFLOW_PARENT_RUN_ID: self.parent_id})}
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={SEARCH_TAG: name})
            self.parent_id = run.info.run_id
            self.client.log_batch(self.parent_id, params=[_param(k, v) for k, v in _params(params).items()])
        return self.parent_id

    @property
    def trial_run_ids(self) -> dict[str, str]:
        """Run id of each trial's child run, by trial key, for the search opened by :meth:`start_search`."""
        return dict(self._trial_runs)

    def start_trial(self, trial_id: str, params: Mapping[str, Any], name: str | None = None) -> str:
        """The child run of a trial: reused when it exists (a retried or resumed trial). A step already in one of
        its metric histories is not logged again, and a run that FINISHED before is left as it is: every
        later record of its trial is ignored, so a resume never logs a finished trial twice."""
        if trial_id in self._trial_runs:
            run_id = self._trial_runs[trial_id]
            run = self.client.get_run(run_id)
            if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
                self._done.add(trial_id)
                return run_id
            self._logged[run_id] = {(key, m.step) for key in run.data.metrics
                                    for m in self.client.get_metric_history(run_id, key)}
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name or trial_id, tags={
            MLFLOW_PARENT_RUN_ID: self.parent_id, TRIAL_TAG: trial_id, MLFLOW_RUN_NAME: name or trial_id})
        self._trial_runs[trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in _params(params).items()])
        return run.info.run_id

    def log_metrics(self, trial_id: str, metrics: Mapping[str, Any], step: int) -> None:
        if trial_id in self._done:
            return
        now, run_id = int(time.time() * 1000), self._trial_runs[trial_id]
        logged = self._logged.setdefault(run_id, set())
        new = [Metric(k, v, now, step) for k, v in _metrics(metrics).items() if (k, step) not in logged]
        logged.update((m.key, step) for m in new)
        if new:
            self.client.log_batch(run_id, metrics=new)

    def log_curve(self, trial_id: str, curve: list[Mapping[str, Any]]) -> None:
        """The accuracy-vs-alpha curve as metric histories (step = alpha) and as a JSON artifact."""
        for point in curve:
            if not float(point["alpha"]).is_integer():
                raise ValueError(f"curve alpha {point['alpha']} is not a whole number: MLflow steps are integers")
            self.log_metrics(trial_id, {CURVE_PREFIX + k: v for k, v in point.items() if k != "alpha"},
                             int(point["alpha"]))
        if trial_id not in self._done:
            self.client.log_dict(self._trial_runs[trial_id], list(curve), "curve.json")

    def log_dict(self, trial_id: str | None, data: Any, name: str) -> None:
        """A JSON artifact of a trial's run (or of the search's, ``trial_id=None``)."""
        if trial_id in self._done:
            return
        self.client.log_dict(self.parent_id if trial_id is None else self._trial_runs[trial_id], data, name)

    def log_artifact_text(self, trial_id: str | None, text: str, name: str) -> None:
        run_id = self.parent_id if trial_id is None else self._trial_runs[trial_id]
        self.client.log_text(run_id, text, name)

    def set_tag(self, trial_id: str | None, key: str, value: str) -> None:
        if trial_id in self._done:
            return
        self.client.set_tag(self.parent_id if trial_id is None else self._trial_runs[trial_id], key, value)

    def finish_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        """End a trial's run: FINISHED, KILLED (pruned or stopped) or FAILED (with its error)."""
        run_id = self._trial_runs.get(trial_id)
        if run_id is None or trial_id in self._done:
            return
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[-5000:])
        self.client.set_terminated(run_id, status)

    def close_dangling(self) -> int:
        """Mark every child run still RUNNING as KILLED (its trial's process died); the number closed."""
        running = [r for r in self._find({MLFLOW_PARENT_RUN_ID: self.parent_id})
                   if r.info.status == RunStatus.to_string(RunStatus.RUNNING)]
        for run in running:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(running)

    def finish_search(self, status: str = "FINISHED") -> None:
        self.close_dangling()
        self.client.set_terminated(self.parent_id, status)


def _param(key: str, value: str) -> Param:
    return Param(key, value[:6000])


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
        if "accuracy" not in metrics or "precision_bits" not in metrics:
            continue
        points.append(Point(trial=run.data.tags.get(TRIAL_TAG, run.info.run_id), alpha=metrics["precision_bits"],
                            accuracy=metrics["accuracy"], depth=int(metrics.get("depth", 0)), run_id=run.info.run_id,
                            params=dict(run.data.params),
                            costs={k: metrics[k] for k in COST_METRICS if k in metrics}))
    return points


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def recorded_search(uri: str, experiment: str, name: str) -> tuple[list[str], int] | None:
    """Read only (a sqlite store that is not there is not created): the run ids of search ``name`` in
    ``experiment`` (its parent first, then its trials' runs) and how many trial runs FINISHED; None if none."""
    if not _store_exists(uri):
        return None
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    parents = client.search_runs([found.experiment_id], f"tags.`{SEARCH_TAG}` = '{name}'") if found else []
    if not parents:
        return None
    children = [r for p in parents for r in client.search_runs(
        [found.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{p.info.run_id}'")]
    finished = sum(r.info.status == RunStatus.to_string(RunStatus.FINISHED) for r in children)
    return [r.info.run_id for r in parents + children], finished


def discard_runs(uri: str, run_ids: list[str]) -> None:
    """Delete runs (MLflow's soft delete: they leave every search and listing, the store's garbage
    collection removes them for good)."""
    client = MlflowClient(uri)
    for run_id in run_ids:
        client.delete_run(run_id)
