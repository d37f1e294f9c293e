"""Run a search: Optuna (or a deterministic per-layer walk) chooses the points, Ray Tune runs the trials, MLflow
records them, and the answer is confirmed on images no trial saw.

Objectives (given to the searcher, never to ``TuneConfig``, which would silently make the study single
objective): minimise the cost (``search.cost``: the mean alpha, or bootstraps, levels or estimated latency
under the CKKS preset), maximise ``accuracy`` and, optionally, minimise ``depth``; the target accuracy is a
constraint. ASHA, when enabled, stops bad training runs on its own metric, the PANN accuracy after each
epoch; a trial it stops reaches Optuna as PRUNED.
"""

from __future__ import annotations

import logging
import time

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pann.convert import prepare
from pann.data import NUM_CLASSES
from pann.groups import layer_groups
from pann.models import build_model
from search import answer
from search.callback import ProgressCallback, TrackingCallback
from search.config import SearchConfig, SearchConfigError
from search.config_checks import WALKS
from search.preflight import (SearchError, check_address, check_inputs, plan, prepare_approximations,
                              record_config)
from search.searchers import BestFirstSearch, FeasibleOnlyOptunaSearch, GreedySearch
from search.space import alpha_key, alpha_values, constants, max_epochs, param_space, uniform_points
from search.trial import run_trial
from tracking.runs import SearchRecorder

logger = logging.getLogger(__name__)

# The metric each cost objective minimises (the trial reports them all).
COST_METRIC = {"alpha": "precision_bits", "bootstraps": "bootstraps", "levels": "levels", "latency": "latency_s"}


def groups_of(search: SearchConfig) -> dict[str, list[str]]:
    """The layer groups of the search's model at its granularity (traced once, without weights)."""
    return layer_groups(prepare(build_model(search.model, NUM_CLASSES[search.dataset])), search.granularity)


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


def _searcher(search: SearchConfig, groups: dict[str, list[str]]):
    keys = {g: "alpha" if list(groups) == ["network"] else alpha_key(g) for g in groups}
    if search.strategy == "greedy":
        return GreedySearch(list(groups), alpha_values(search.space), keys, search.validation_target,
                            constants(search.space))
    if search.strategy == "best-first":
        return BestFirstSearch(list(groups), alpha_values(search.space), keys, search.validation_target,
                               constants(search.space), search.concurrency)
    metrics, modes = [COST_METRIC[search.cost], "accuracy"], ["min", "max"]
    if search.depth_objective:
        metrics, modes = metrics + ["depth"], modes + ["min"]
    return FeasibleOnlyOptunaSearch(metric=metrics, mode=modes, storage=_optuna_storage(search),
                                    study_name=search.name, seed=search.seed,
                                    points_to_evaluate=uniform_points(search.space, groups) or None,
                                    target_accuracy=search.validation_target)


def tune_config(search: SearchConfig, groups: dict[str, list[str]] | None = None) -> tune.TuneConfig:
    """Objectives on the searcher, ASHA on its own metric, none on TuneConfig itself. In post-training searches
    worker processes are reused between trials, so compilation, data loading and calibration are paid once."""
    groups = groups or {"network": []}
    epochs = max_epochs(search.space)
    scheduler = (ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration",
                               grace_period=search.grace_period, max_t=epochs + 1)
                 if search.early_stopping and epochs > 0 else FIFOScheduler())
    return tune.TuneConfig(search_alg=_searcher(search, groups), scheduler=scheduler, num_samples=search.trials,
                           max_concurrent_trials=search.concurrency, time_budget_s=search.time_s,
                           # Post-training searches reuse worker processes (compilation, data and ranges once per
                           # worker); training searches do not, so that a retried trial restores its checkpoint.
                           reuse_actors=epochs == 0)


def _tuner(search: SearchConfig, groups: dict[str, list[str]], resume: bool, progress=None) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(run_trial, search=search, groups=groups),
                                    {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})
    if resume:
        return tune.Tuner.restore(str(search.run_dir), trainable, resume_unfinished=True, resume_errored=True)
    space = param_space(dict(search.space), groups)
    if search.strategy in WALKS:
        space = constants(search.space)
    return tune.Tuner(
        trainable, param_space=space, tune_config=tune_config(search, groups),
        run_config=tune.RunConfig(name=search.name, storage_path=search.storage, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=search.max_failures),
                                  callbacks=[TrackingCallback(search), ProgressCallback(search, progress)]))


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped before its trials did (Ctrl-C, SIGTERM); it can be continued with ``--resume``."""


def _close_unfinished_optuna_trials(search: SearchConfig, ending: str) -> None:
    """Optuna trials still RUNNING after the search were cut off: left RUNNING after an interrupt (the resume
    runs them), PRUNED when the time budget stopped them (Tune tells the searcher nothing then), FAIL
    otherwise (asked for, never run)."""
    if search.strategy != "optuna" or ending == "interrupted":
        return
    study = optuna.load_study(study_name=search.name, storage=_optuna_storage(search))
    state = TrialState.PRUNED if ending == "budget" else TrialState.FAIL
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=state)


def _ending(search: SearchConfig, results, seconds: float) -> str:
    """How the trials ended: ``failed`` (every one), ``interrupted`` (Tune returned before they did: Ctrl-C,
    SIGTERM), ``budget`` (the time budget ran out) or ``finished``."""
    final = [r for r in results if (r.metrics or {}).get("final")]
    if not final and any(r.error is not None for r in results):
        return "failed"
    if search.time_s is not None and seconds >= search.time_s:
        return "budget"
    if search.strategy != "optuna":
        return "finished"
    # A trial Tune started that Optuna was never told about was cut off (ASHA's stops are told, as PRUNED).
    study = optuna.load_study(study_name=search.name, storage=_optuna_storage(search))
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    cut_off = [r for r in results if (r.config or {}).get("optuna_trial") in running]
    return "interrupted" if len(results) < search.trials or cut_off else "finished"


def _check_ended(search: SearchConfig, results, ending: str) -> None:
    """Raise unless the search ran to its end: every trial failing is a :class:`SearchError` with the first
    error's last line; an interrupt is :class:`SearchInterrupted`."""
    if ending == "failed":
        errors = [r.error for r in results if r.error is not None]
        lines = str(errors[0]).strip().splitlines()
        raise SearchError(f"every trial failed ({len(errors)}); the first: {lines[-1] if lines else repr(errors[0])}")
    if ending == "interrupted":
        done = sum(bool((r.metrics or {}).get("final")) for r in results)
        raise SearchInterrupted(f"search {search.name!r} interrupted after {done} of {search.trials} trials; "
                                "continue it with --resume")


def run_search(search: SearchConfig, address: str | None = None, resume: bool = False,
               progress=None, force_new: bool = False) -> answer.SearchOutcome:
    """Run (or resume) ``search`` on a local Ray instance or the cluster at ``address``. ``progress``, if given,
    is called with a one-line summary after every finished trial (see :class:`ProgressCallback`).
    ``force_new`` discards an earlier run of the search first (see :func:`search.preflight.plan`)."""
    check_address(address)
    check_inputs(search)
    resume = plan(search, resume, force_new)
    prepare_approximations(search)
    groups = groups_of(search)
    if address is None:
        # "local": always a new instance of our own, never another Ray that happens to run here.
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        check_resources(search, ray.cluster_resources())
        recorder = SearchRecorder(search.tracking_uri, search.experiment)
        if not resume:
            record_config(search)
        logger.info("search %s: %d trials, %d at a time, %d alpha group(s) (%s granularity), cost %s; MLflow: %s",
                    search.name, search.trials, search.concurrency, len(groups), search.granularity,
                    search.cost, search.tracking_uri)
        try:
            started = time.monotonic()
            results = _tuner(search, groups, resume, progress).fit()
            ending = _ending(search, results, time.monotonic() - started)
            _close_unfinished_optuna_trials(search, ending)
            _check_ended(search, results, ending)
            outcome = answer.outcome(search, groups, recorder, results)
        except BaseException as exc:  # the parent run must not stay RUNNING
            if recorder.parent_id is not None or recorder.search_exists(search.name):
                recorder.start_search(search.name, {})
                recorder.finish_search("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        recorder.finish_search()
        return outcome
    finally:
        ray.shutdown()
