"""Run a search: Optuna chooses the points, Ray Tune runs the trials, MLflow records them.

Objectives (given to Optuna, never to ``TuneConfig``, which would silently make the study single-objective):
minimise ``precision_bits``, maximise ``accuracy`` and, optionally, minimise ``depth``; the target accuracy
is a constraint (``target - accuracy <= 0`` is feasible). ASHA, when enabled, stops bad training runs on
its own metric, the PANN accuracy after each epoch; a trial it stops reaches Optuna as PRUNED.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from pann.catalog import relu_for_precision
from search.config import INTEGER_DIMENSIONS, SearchConfig, SearchConfigError
from search.trial import Evaluation, backbone_for, neighbourhood, run_trial, test_set
from tracking.pareto import Point, export_front, lowest_precision, pareto_front
from tracking.runs import BACKBONE_TAG, SearchRecorder, check_reachable


class SearchError(ValueError):
    """A search that cannot start or resume."""


class FeasibleOnlyOptunaSearch(OptunaSearch):
    """OptunaSearch that records the accuracy constraint and tells Optuna about unfinished trials.

    Tune hands a trial stopped early (by ASHA or a time budget) to ``on_trial_complete`` with its last
    intermediate result; the stock searcher would tell Optuna it is COMPLETE with half-trained values.
    Only a result marked ``final`` counts; anything else is PRUNED (or FAIL on error).
    """

    def __init__(self, *args, target_accuracy: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_accuracy = target_accuracy

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's next point, with its trial number as ``optuna_trial``.

        After a driver crash, the study can hold a trial that was asked for but never reached Tune's
        checkpoint; it is RUNNING and owned by no one. It is adopted here instead of asking a new one,
        so a resumed search has no extra trials.
        """
        if trial_id not in self._ot_trials and self._ot_study is not None:
            owned = {t._trial_id for t in self._ot_trials.values()}
            orphans = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t._trial_id not in owned]
            if orphans:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphans[0]._trial_id)
        point = super().suggest(trial_id)
        return None if point is None else {**point, "optuna_trial": self._ot_trials[trial_id].number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not (result and result.get("final")) or error:
            result = None
        elif trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._ot_trials[trial_id].set_constraint("accuracy", self.target_accuracy - result["accuracy"])
        super().on_trial_complete(trial_id, result, error)


class TrackingCallback(tune.Callback):
    """Mirrors every trial into MLflow. Holds only plain data, so Tune can checkpoint it; the MLflow
    connection is made in ``setup``, also after ``Tuner.restore``, and finds its existing runs again."""

    def __init__(self, search: SearchConfig):
        self.search = search
        self._recorder: SearchRecorder | None = None

    def __getstate__(self) -> dict:
        return {"search": self.search, "_recorder": None}

    def setup(self, **info) -> None:
        self._recorder = SearchRecorder(self.search.tracking_uri, self.search.experiment)
        self._recorder.start_search(self.search.name, _search_params(self.search))

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._recorder.start_trial(_run_key(trial.config, trial.trial_id), trial.config, name=trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._recorder.log_metrics(_run_key(trial.config, trial.trial_id), result,
                                   step=result["training_iteration"])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        key = _run_key(trial.config, trial.trial_id)
        if not result.get("final"):
            self._recorder.finish_trial(key, "KILLED")
            print(f"  {trial.trial_id}: stopped early (pruned)", flush=True)
            return
        self._recorder.log_curve(key, json.loads(result["curve"]))
        self._recorder.log_artifact_text(key, relu_for_precision(result["precision_bits"]).to_json(),
                                         "approximation.json")
        if result["backbone"]:
            self._recorder.set_tag(key, BACKBONE_TAG, result["backbone"])
        self._recorder.finish_trial(key, "FINISHED")
        verdict = "meets" if result["accuracy"] >= self.search.target_accuracy else "misses"
        backbone = ("trained" if result["trained_backbone"] else
                    "pretrained" if result["backbone"] == self.search.weights else "reused from the store")
        print(f"  {trial.trial_id}: alpha {result['precision_bits']:g}, accuracy {100 * result['accuracy']:.2f}% "
              f"({verdict} the target), backbone {backbone}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = ""
        if trial.error_file and os.path.isfile(trial.error_file):
            error = Path(trial.error_file).read_text()
        self._recorder.finish_trial(_run_key(trial.config, trial.trial_id), "FAILED",
                                    error=error or "trial failed")
        print(f"  {trial.trial_id}: FAILED ({error.strip().splitlines()[-1] if error.strip() else 'error'})",
              flush=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._recorder.close_dangling()


def _run_key(config: dict, trial_id: str) -> str:
    """Runs are keyed by Optuna trial number, so a point adopted after a crash keeps its run."""
    return f"optuna-{config['optuna_trial']}" if "optuna_trial" in config else trial_id


def _search_params(search: SearchConfig) -> dict[str, Any]:
    return {"target_accuracy": search.target_accuracy, "model": search.model, "dataset": search.dataset,
            "weights": search.weights, "trials": search.trials, "concurrency": search.concurrency,
            "space": dict(search.space), "training": dict(search.training), "storage": search.storage}


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as Tune domains: a list is a choice, a single value a constant, a mapping a range."""
    domains = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            domains[name] = spec[0] if len(spec) == 1 else tune.choice(spec)
        elif isinstance(spec, dict):
            if name in INTEGER_DIMENSIONS:
                domains[name] = (tune.lograndint if spec.get("log") else tune.randint)(spec["low"], spec["high"] + 1)
            else:
                domains[name] = (tune.loguniform if spec.get("log") else tune.uniform)(spec["low"], spec["high"])
        else:
            domains[name] = spec
    return domains


def _alphas(space: dict[str, Any], neighbours: int) -> list[float]:
    """Every alpha a trial of this space can measure."""
    spec = space["alpha"]
    values = spec if isinstance(spec, list) else range(spec["low"], spec["high"] + 1) \
        if isinstance(spec, dict) else [spec]
    return sorted({a for value in values for a in neighbourhood(value, neighbours)})


def _max_epochs(space: dict[str, Any]) -> int:
    spec = space.get("epochs", 0)
    return max(spec) if isinstance(spec, list) else spec["high"] if isinstance(spec, dict) else spec


def check_resources(search: SearchConfig, available: dict[str, float]) -> None:
    """Refuse a search whose trials could never be placed on this cluster."""
    problems = []
    if search.cpus_per_trial > available.get("CPU", 0):
        problems.append(f"budget.cpus_per_trial: {search.cpus_per_trial:g} CPUs per trial, but the cluster has "
                        f"{available.get('CPU', 0):g}")
    if search.gpus_per_trial > available.get("GPU", 0):
        problems.append(f"budget.gpus_per_trial: {search.gpus_per_trial:g} GPUs per trial, but the cluster has "
                        f"{available.get('GPU', 0):g}")
    if problems:
        raise SearchConfigError(problems, "resources")


def _optuna_storage(search: SearchConfig) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{search.run_dir / 'optuna.db'}")


def tune_config(search: SearchConfig) -> tune.TuneConfig:
    """Objectives on the searcher, ASHA on its own metric, none on TuneConfig itself."""
    metrics, modes = ["precision_bits", "accuracy"], ["min", "max"]
    if search.depth_objective:
        metrics, modes = metrics + ["depth"], modes + ["min"]
    searcher = FeasibleOnlyOptunaSearch(metric=metrics, mode=modes, storage=_optuna_storage(search),
                                        study_name=search.name, seed=search.seed,
                                        target_accuracy=search.target_accuracy)
    max_epochs = _max_epochs(search.space)
    scheduler = (ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration",
                               grace_period=search.grace_period, max_t=max_epochs + 1)
                 if search.early_stopping and max_epochs > 0 else FIFOScheduler())
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=search.trials,
                           max_concurrent_trials=search.concurrency, time_budget_s=search.time_s)


def _tuner(search: SearchConfig, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(run_trial, search=search),
                                    {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})
    if resume:
        return tune.Tuner.restore(str(search.run_dir), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable, param_space=param_space(dict(search.space)), tune_config=tune_config(search),
        run_config=tune.RunConfig(name=search.name, storage_path=search.storage, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=search.max_failures),
                                  callbacks=[TrackingCallback(search)]))


@dataclass
class SearchOutcome:
    """What a search found: the lowest feasible precision (None if no trial met the target) and the front."""

    answer: Point | None
    front: list[Point]
    points: list[Point]
    test_accuracy: float | None
    parent_run_id: str
    trials: int
    backbone_trainings: int


def _points(results, run_ids: dict[str, str]) -> list[Point]:
    """The measured (trial, alpha) points of the finished trials, each with its MLflow run id."""
    points = []
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get("final"):
            continue
        params = dict(result.config or {})
        run_id = run_ids.get(_run_key(params, metrics["trial_id"]))
        for p in json.loads(metrics["curve"]):
            points.append(Point(trial=metrics["trial_id"], alpha=p["alpha"], accuracy=p["accuracy"], depth=p["depth"],
                                run_id=run_id, params={**params, "alpha": p["alpha"], "backbone": metrics["backbone"]}))
    return points


def _close_unfinished_optuna_trials(search: SearchConfig) -> None:
    """After the search, a trial still RUNNING in Optuna was asked for but never ran (driver crash)."""
    study = optuna.load_study(study_name=search.name, storage=_optuna_storage(search))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def run_search(search: SearchConfig, address: str | None = None, resume: bool = False) -> SearchOutcome:
    """Run (or resume) ``search`` on a local Ray instance or the cluster at ``address``."""
    check_reachable(search.tracking_uri)
    restorable = tune.Tuner.can_restore(str(search.run_dir))
    if resume and not restorable:
        raise SearchError(f"nothing to resume: no search {search.name!r} in {search.storage}")
    if not resume and search.run_dir.exists():
        raise SearchError(f"search {search.name!r} already exists in {search.storage}; pass --resume to continue "
                          "it, or give the search another name")
    if address is None:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        check_resources(search, ray.cluster_resources())
        recorder = SearchRecorder(search.tracking_uri, search.experiment)
        if not resume and recorder.search_exists(search.name):
            raise SearchError(f"search {search.name!r} is already recorded in MLflow experiment "
                              f"{search.experiment!r}; pass --resume or give the search another name")
        alphas = _alphas(dict(search.space), search.neighbours)
        print(f"preparing ReLU approximations for alpha {alphas[0]:g}..{alphas[-1]:g}", flush=True)
        for alpha in alphas:
            relu_for_precision(alpha)
        search.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"search {search.name}: {search.trials} trials, {search.concurrency} at a time; "
              f"MLflow: {search.tracking_uri}", flush=True)
        try:
            results = _tuner(search, resume).fit()
            _close_unfinished_optuna_trials(search)
            outcome = _outcome(search, recorder, results)
        except BaseException as exc:  # the parent run must not stay RUNNING
            if recorder.parent_id is not None or recorder.search_exists(search.name):
                recorder.start_search(search.name, {})
                recorder.finish_search("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        recorder.finish_search()
        return outcome
    finally:
        ray.shutdown()


def _outcome(search: SearchConfig, recorder: SearchRecorder, results) -> SearchOutcome:
    parent_id = recorder.start_search(search.name, _search_params(search))
    points = _points(results, recorder.trial_run_ids)
    front = pareto_front(points, search.target_accuracy, with_depth=search.depth_objective)
    answer = lowest_precision(points, search.target_accuracy)
    test_accuracy = None
    if answer is not None:
        test_accuracy = _test_accuracy(search, answer.params)
        recorder.client.log_metric(parent_id, "lowest_alpha", answer.alpha)
        recorder.client.log_metric(parent_id, "answer_validation_accuracy", answer.accuracy)
        recorder.client.log_metric(parent_id, "answer_test_accuracy", test_accuracy)
        recorder.client.log_dict(parent_id, {"alpha": answer.alpha, "validation_accuracy": answer.accuracy,
                                             "test_accuracy": test_accuracy, "depth": answer.depth,
                                             "trial": answer.trial, "config": dict(answer.params),
                                             "approximation": relu_for_precision(answer.alpha).to_dict()},
                                 "answer.json")
    export_dir = search.run_dir / "pareto"
    for suffix in ("csv", "json", "png", "html"):
        export_front(export_dir / f"front.{suffix}", points, search.target_accuracy, title=search.name,
                     with_depth=search.depth_objective)
        recorder.client.log_artifact(parent_id, str(export_dir / f"front.{suffix}"), "pareto")
    trainings = sum(int((r.metrics or {}).get("trained_backbone", 0)) for r in results)
    return SearchOutcome(answer, front, points, test_accuracy, parent_id, len(results), trainings)


def _test_accuracy(search: SearchConfig, point: dict[str, Any]) -> float:
    """Test-set accuracy of the answer: its stored backbone, converted as in its trial."""
    model, _, _, _ = backbone_for(search, point)
    return Evaluation.for_search(search).curve(model, [point["alpha"]], point, data=test_set(search))[0].accuracy


def print_outcome(outcome: SearchOutcome, search: SearchConfig, out=sys.stdout) -> None:
    trainings = "1 backbone training" if outcome.backbone_trainings == 1 else \
        f"{outcome.backbone_trainings} backbone trainings"
    print(f"\n{outcome.trials} trials, {trainings}", file=out)
    if outcome.answer is None:
        print(f"no trial reached the target accuracy {100 * search.target_accuracy:.2f}%", file=out)
    else:
        a = outcome.answer
        print(f"lowest precision meeting {100 * search.target_accuracy:.2f}%: alpha {a.alpha:g} "
              f"(validation {100 * a.accuracy:.2f}%, test {100 * outcome.test_accuracy:.2f}%, depth {a.depth}), "
              f"trial {a.trial}, backbone {a.params.get('backbone') or 'pretrained'}", file=out)
    print("feasible Pareto front (alpha, validation accuracy, depth, trial):", file=out)
    for p in outcome.front:
        print(f"  {p.alpha:>4g}  {100 * p.accuracy:6.2f}%  {p.depth:3d}  {p.trial}", file=out)
    print(f"MLflow parent run {outcome.parent_run_id} ({search.tracking_uri}); "
          f"front files in {search.run_dir / 'pareto'}", file=out)
