"""The Tune callback that mirrors every trial of a search into MLflow, on the driver."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from pann.conversion.groups import is_per_network
from pann.cost.objectives import OBJECTIVES, objective
from search.config import SearchConfig
from search.config_checks import CONTINUES, LINEAGE
from tracking.recorder import SearchRecorder
from tracking.schema import BACKBONE_TAG

logger = logging.getLogger(__name__)


def run_key(config: dict, trial_id: str) -> str:
    """Runs are keyed by Optuna trial number, so a point adopted after a crash keeps its run; a population's
    member by its lineage (a member that takes over another's network trains a new one, in a new run)."""
    if LINEAGE in config:
        return f"lineage-{config[LINEAGE]}"
    return f"optuna-{config['optuna_trial']}" if "optuna_trial" in config else trial_id


def search_params(search: SearchConfig) -> dict[str, Any]:
    """What the parent run records of a search's config."""
    return {"target_accuracy": search.target_accuracy, "model": search.model, "dataset": search.dataset,
            "weights": search.weights, "trials": search.trials, "concurrency": search.concurrency,
            "granularity": search.granularity, "cost": search.cost, "preset": search.preset,
            "strategy": search.strategy, "validation_size": search.validation_size,
            "confirmation_size": search.confirmation_size, "confirmations": search.confirmations,
            "validation_margin": search.validation_margin,
            "space": dict(search.space), "training": dict(search.training), "storage": search.storage}


class TrackingCallback(tune.Callback):
    """Mirrors every trial into MLflow: parameters (the alpha of every group), per-result metrics, and at the
    end the network costs, the accuracy-vs-alpha curve (granularity network) and the PANN spec as artifacts.

    Holds only plain data, so Tune can checkpoint it; the MLflow connection is made in ``setup``, also after
    ``Tuner.restore``, and finds its existing runs again.
    """

    def __init__(self, search: SearchConfig):
        self.search = search
        self._recorder: SearchRecorder | None = None
        self._runs: dict[str, str] = {}  # each trial's current run key

    def __getstate__(self) -> dict:
        return {"search": self.search, "_recorder": None, "_runs": self._runs}

    def setup(self, **info) -> None:
        self._recorder = SearchRecorder(self.search.tracking_uri, self.search.experiment)
        self._recorder.start_search(self.search.name, search_params(self.search))

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        key, given_up = run_key(trial.config, trial.trial_id), self._runs.get(trial.trial_id)
        if given_up not in (None, key):  # population-based training: the trial took over another member's network
            self._recorder.finish_trial(given_up, "KILLED")
            logger.info("  %s: %s replaced by a copy of %s", trial.trial_id, given_up, trial.config.get(CONTINUES))
        self._runs[trial.trial_id] = key
        self._recorder.start_trial(key, trial.config, name=f"{trial.trial_id} {trial.config.get(LINEAGE, '')}".strip())

    def _run_of(self, trial) -> str:
        """The run the trial writes to: that of the config it started with (population-based training changes
        a trial's config in the scheduler, before the callbacks see the result it reported under the old one)."""
        return self._runs.get(trial.trial_id) or run_key(trial.config, trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._recorder.log_metrics(self._run_of(trial), result, step=result["training_iteration"])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        key = self._run_of(trial)
        if not result.get("final"):
            self._recorder.finish_trial(key, "KILLED")
            logger.info("  %s: stopped early (pruned)", trial.trial_id)
            return
        if is_per_network(self.search.granularity):  # the accuracy-vs-alpha curve of the neighbouring alphas
            self._recorder.log_curve(key, json.loads(result["curve"]))
        self._recorder.log_dict(key, json.loads(result["spec"]), "spec.json")
        if result["backbone"]:
            self._recorder.set_tag(key, BACKBONE_TAG, result["backbone"])
        self._recorder.finish_trial(key, "FINISHED")
        verdict = "meets" if result["accuracy"] >= self.search.validation_target else "misses"
        backbone = ("trained" if result["trained_backbone"] else
                    "pretrained" if result["backbone"] == self.search.weights else "reused from the store")
        costs = ", ".join(f"{k} {result[k]:g}" for k in ("bootstraps", "levels") if k in result)
        logger.info("  %s: alpha %g, accuracy %.2f%% (%s the target), %s, backbone %s", trial.trial_id,
                    result[OBJECTIVES["alpha"].metric], 100 * result["accuracy"], verdict, costs, backbone)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = ""
        if trial.error_file and os.path.isfile(trial.error_file):
            error = Path(trial.error_file).read_text()
        self._recorder.finish_trial(self._run_of(trial), "FAILED", error=error or "trial failed")
        logger.info("  %s: FAILED (%s)", trial.trial_id,
                    error.strip().splitlines()[-1] if error.strip() else "error")

    def on_experiment_end(self, trials: list, **info) -> None:
        self._recorder.close_dangling()



class ProgressCallback(tune.Callback):
    """Reports a search's progress after every finished trial: trials done of the total, running, the best
    feasible point so far (by the search's cost), elapsed time and an estimate of the time left.

    ``report`` receives each line (the CLI rewrites one terminal line with it); the estimate assumes the
    remaining trials take as long as the finished ones did on average, and never exceeds what is left of the
    search's time budget (``budget.time_s``).
    """

    def __init__(self, search: SearchConfig, report):
        self.search, self.report = search, report
        self.started = time.monotonic()
        self.done = 0
        self.best: tuple[float, float] | None = None  # (cost, accuracy)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "report": None}

    def _line(self, running: int) -> str:
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.search.trials - self.done) if self.done else float("nan")
        if self.search.time_s is not None and not left <= self.search.time_s - elapsed:
            left = max(self.search.time_s - elapsed, 0.0)  # the time budget ends the search first
        best = "none feasible yet" if self.best is None else \
            f"best feasible {self.search.cost} {self.best[0]:g} at {100 * self.best[1]:.2f}%"
        return (f"{self.done}/{self.search.trials} trials done, {running} running, {best}, "
                f"{_clock(elapsed)} elapsed, ~{_clock(left)} left")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        result = trial.last_result or {}
        metric = objective(self.search.cost).metric
        if result.get("final") and result["accuracy"] >= self.search.validation_target:
            point = (result[metric], result["accuracy"])
            if self.best is None or (point[0], -point[1]) < (self.best[0], -self.best[1]):
                self.best = point
        if self.report is not None:
            self.report(self._line(sum(t.status == "RUNNING" for t in trials)))

    on_trial_error = on_trial_complete


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing to estimate from yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
