"""Run a search: its strategy (:mod:`search.strategies`: Optuna, or a deterministic per-layer walk) chooses the
points, Ray Tune runs the trials, MLflow records them, and the answer is confirmed on images no trial saw.

Objectives go to the strategy's searcher, never to ``TuneConfig`` (which would silently make a study single
objective). The strategy's scheduler works on its own metric: ASHA, when enabled, stops bad training runs on the
PANN accuracy after each epoch (a trial it stops reaches Optuna as PRUNED); population-based training
(:mod:`search.strategies.population`) replaces them with copies of better ones.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import warnings

import ray
from ray import tune

from pann.conversion.flow import prepare
from pann.data import NUM_CLASSES
from pann.conversion.groups import LayerGroups, layer_groups
from pann.models.builders import build_model
from search import answer
from search.callback import ProgressCallback, TrackingCallback
from search.config import SearchConfig, SearchConfigError
from search.preflight import (SearchError, check_address, check_inputs, plan, prepare_approximations,
                              record_config)
from search.lock import search_lock
from search.space import max_epochs
from search.strategies import Strategy, strategy as strategy_named
from search.trial import run_trial
from tracking.recorder import SearchRecorder

logger = logging.getLogger(__name__)

def groups_of(search: SearchConfig) -> LayerGroups:
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


def strategy_of(search: SearchConfig, groups: LayerGroups) -> Strategy:
    """The search's strategy (``search.strategy``), built for its layer groups."""
    return strategy_named(search.strategy)(search, groups)


def tune_config(search: SearchConfig, strategy: Strategy) -> tune.TuneConfig:
    """Objectives on the strategy's searcher, the strategy's scheduler on its own metric, none on TuneConfig
    itself. In post-training searches worker processes are reused between trials, so compilation, data loading
    and calibration are paid once."""
    epochs = max_epochs(search.space)
    searcher = strategy.searcher()
    return tune.TuneConfig(search_alg=searcher, scheduler=strategy.scheduler(), num_samples=strategy.samples(),
                           # Tune's own variant generator would not create a population's later members until
                           # earlier ones end: every member is a trial at once, and the cluster's CPUs (budget.
                           # cpus_per_trial each) decide how many train while the others wait, paused.
                           max_concurrent_trials=search.concurrency if searcher is not None else None,
                           time_budget_s=search.time_s,
                           # Post-training searches reuse worker processes (compilation, data and ranges once per
                           # worker); training searches do not, so that a retried trial restores its checkpoint.
                           reuse_actors=epochs == 0)


def _tuner(search: SearchConfig, strategy: Strategy, resume: bool, progress=None) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(run_trial, search=search, groups=strategy.groups),
                                    {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})
    if resume:
        return tune.Tuner.restore(str(search.run_dir), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable, param_space=strategy.param_space(), tune_config=tune_config(search, strategy),
        run_config=tune.RunConfig(name=search.name, storage_path=search.storage, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=search.max_failures),
                                  callbacks=[TrackingCallback(search), ProgressCallback(search, progress)]))


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped before its trials did (Ctrl-C, SIGTERM); it can be continued with ``--resume``."""


def _ending(search: SearchConfig, strategy: Strategy, results, seconds: float) -> str:
    """How the trials ended: ``failed`` (every one), ``interrupted`` (Tune returned before they did: Ctrl-C,
    SIGTERM), ``budget`` (the time budget ran out) or ``finished``."""
    final = [r for r in results if (r.metrics or {}).get("final")]
    if not final and any(r.error is not None for r in results):
        return "failed"
    if search.time_s is not None and seconds >= search.time_s:
        return "budget"
    return "interrupted" if strategy.cut_off(results) else "finished"


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
               progress=None, force_new: bool = False, sigterm_interrupts: bool = False) -> answer.SearchOutcome:
    """Run (or resume) ``search`` on a local Ray instance or the cluster at ``address``. ``progress``, if given,
    is called with a one-line summary after every finished trial (see :class:`ProgressCallback`).
    ``force_new`` discards an earlier run of the search first (see :func:`search.preflight.plan`). One process at a
    time runs a search of a given name (:func:`search.lock.search_lock`). With ``sigterm_interrupts`` (the command
    line's choice) SIGTERM stops the search as Ctrl-C does, also once Ray has put its own handler in place."""
    check_address(address)
    check_inputs(search)
    with search_lock(search.storage, search.name):
        resume = plan(search, resume, force_new)
        prepare_approximations(search)
        strategy = strategy_of(search, groups_of(search))
        if address is None:
            # "local": always a new instance of our own, never another Ray that happens to run here.
            ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        if sigterm_interrupts:  # Ray's core worker installed a handler that dumps and aborts on SIGTERM
            signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        try:
            return _run(search, strategy, resume, progress)
        finally:
            with _uninterrupted():
                ray.shutdown()


@contextlib.contextmanager
def _uninterrupted():
    """Closing the records and stopping Ray, a later Ctrl-C or SIGTERM (an impatient second one) is ignored: the
    search is stopping already, and an interrupt here would leave the records half closed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(search: SearchConfig, strategy: Strategy, resume: bool, progress) -> answer.SearchOutcome:
    check_resources(search, ray.cluster_resources())
    recorder = SearchRecorder(search.tracking_uri, search.experiment)
    if not resume:
        record_config(search)
    logger.info("search %s: %d trials, %d at a time, %d alpha group(s) (%s granularity), cost %s; MLflow: %s",
                search.name, search.trials, search.concurrency, len(strategy.groups), search.granularity,
                search.cost, search.tracking_uri)
    try:
        started = time.monotonic()
        with warnings.catch_warnings():
            # PBT's advice to reuse actors: training trials start a process each, so a retried trial restores its
            # checkpoint (tune_config).
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            results = _tuner(search, strategy, resume, progress).fit()
        ending = _ending(search, strategy, results, time.monotonic() - started)
        if ending != "interrupted":
            strategy.close_unfinished(ending)
        _check_ended(search, results, ending)
        outcome = answer.outcome(search, strategy.groups, recorder, results)
    except BaseException as exc:  # the parent run must not stay RUNNING
        with _uninterrupted():
            finished = recorder.close_search(search.name, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, SearchInterrupted):
            # a second Ctrl-C (or SIGTERM) while Tune was stopping: the search stopped all the same
            done = "" if finished is None else f" after {finished} of {search.trials} trials"
            raise SearchInterrupted(f"search {search.name!r} interrupted{done}; continue it with --resume") from None
        raise
    recorder.finish_search()
    return outcome
