"""The Tune callback that mirrors every trial of a search into MLflow, on the driver."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ray import tune

from search.config import SearchConfig
from tracking.runs import BACKBONE_TAG, SearchRecorder

logger = logging.getLogger(__name__)


def run_key(config: dict, trial_id: str) -> str:
    """Runs are keyed by Optuna trial number, so a point adopted after a crash keeps its run."""
    return f"optuna-{config['optuna_trial']}" if "optuna_trial" in config else trial_id


def search_params(search: SearchConfig) -> dict[str, Any]:
    """What the parent run records of a search's config."""
    return {"target_accuracy": search.target_accuracy, "model": search.model, "dataset": search.dataset,
            "weights": search.weights, "trials": search.trials, "concurrency": search.concurrency,
            "granularity": search.granularity, "cost": search.cost, "preset": search.preset,
            "strategy": search.strategy, "validation_size": search.validation_size,
            "confirmation_size": search.confirmation_size,
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

    def __getstate__(self) -> dict:
        return {"search": self.search, "_recorder": None}

    def setup(self, **info) -> None:
        self._recorder = SearchRecorder(self.search.tracking_uri, self.search.experiment)
        self._recorder.start_search(self.search.name, search_params(self.search))

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._recorder.start_trial(run_key(trial.config, trial.trial_id), trial.config, name=trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._recorder.log_metrics(run_key(trial.config, trial.trial_id), result,
                                   step=result["training_iteration"])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        key = run_key(trial.config, trial.trial_id)
        if not result.get("final"):
            self._recorder.finish_trial(key, "KILLED")
            logger.info("  %s: stopped early (pruned)", trial.trial_id)
            return
        if self.search.granularity == "network":
            self._recorder.log_curve(key, json.loads(result["curve"]))
        self._recorder.log_dict(key, json.loads(result["spec"]), "spec.json")
        if result["backbone"]:
            self._recorder.set_tag(key, BACKBONE_TAG, result["backbone"])
        self._recorder.finish_trial(key, "FINISHED")
        verdict = "meets" if result["accuracy"] >= self.search.target_accuracy else "misses"
        backbone = ("trained" if result["trained_backbone"] else
                    "pretrained" if result["backbone"] == self.search.weights else "reused from the store")
        costs = ", ".join(f"{k} {result[k]:g}" for k in ("bootstraps", "levels") if k in result)
        logger.info("  %s: alpha %g, accuracy %.2f%% (%s the target), %s, backbone %s", trial.trial_id,
                    result["precision_bits"], 100 * result["accuracy"], verdict, costs, backbone)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = ""
        if trial.error_file and os.path.isfile(trial.error_file):
            error = Path(trial.error_file).read_text()
        self._recorder.finish_trial(run_key(trial.config, trial.trial_id), "FAILED", error=error or "trial failed")
        logger.info("  %s: FAILED (%s)", trial.trial_id,
                    error.strip().splitlines()[-1] if error.strip() else "error")

    def on_experiment_end(self, trials: list, **info) -> None:
        self._recorder.close_dangling()

