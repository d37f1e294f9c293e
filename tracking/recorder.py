"""Writing a search's MLflow records: the parent run, a child run per trial, their metrics and artifacts.

Runs are found again by tags (:mod:`tracking.schema`), so a resumed search reuses its runs instead of opening
duplicates. Everything goes through an explicit :class:`mlflow.MlflowClient`, never MLflow's global active run,
because the driver records many trials at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from tracking.schema import (CURVE_PREFIX, ERROR_TAG, SEARCH_TAG, TRIAL_TAG, metric_values, param, param_values)
from tracking.stores import artifact_location, check_reachable

__all__ = ["SearchRecorder", "discard_runs"]


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
            self.client.log_batch(self.parent_id, params=[param(k, v) for k, v in param_values(params).items()])
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
        self.client.log_batch(run.info.run_id, params=[param(k, v) for k, v in param_values(params).items()])
        return run.info.run_id

    def log_metrics(self, trial_id: str, metrics: Mapping[str, Any], step: int) -> None:
        if trial_id in self._done:
            return
        now, run_id = int(time.time() * 1000), self._trial_runs[trial_id]
        logged = self._logged.setdefault(run_id, set())
        new = [Metric(k, v, now, step) for k, v in metric_values(metrics).items() if (k, step) not in logged]
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

    def finished_trials(self) -> int:
        """How many trial runs of the search opened by :meth:`start_search` FINISHED."""
        return sum(r.info.status == RunStatus.to_string(RunStatus.FINISHED)
                   for r in self._find({MLFLOW_PARENT_RUN_ID: self.parent_id}))

    def close_search(self, name: str, status: str) -> int | None:
        """Close the records of search ``name`` that stopped before its end (``status``: KILLED or FAILED; trial
        runs still RUNNING become KILLED); how many of its trials had FINISHED, None when it has no records."""
        if self.parent_id is None and not self.search_exists(name):
            return None
        self.start_search(name, {})
        finished = self.finished_trials()
        self.finish_search(status)
        return finished

    def finish_search(self, status: str = "FINISHED") -> None:
        self.close_dangling()
        self.client.set_terminated(self.parent_id, status)


def discard_runs(uri: str, run_ids: list[str]) -> None:
    """Delete runs (MLflow's soft delete: they leave every search and listing, the store's garbage collection
    removes them for good) and every registered model version logged under them, so that the registry never
    offers a discarded answer (a registered model left without versions is deleted too)."""
    client = MlflowClient(uri)
    discarded = set(run_ids)
    for version in client.search_model_versions():
        if version.run_id in discarded:
            client.delete_model_version(version.name, version.version)
            if not client.search_model_versions(f"name = '{version.name}'"):
                client.delete_registered_model(version.name)
    for run_id in run_ids:
        client.delete_run(run_id)
