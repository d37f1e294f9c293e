"""Before Ray starts: everything about a search that is cheap to check, and what to do with what an earlier
run of the same search left behind.

A search's records are ``runs/NAME`` (Ray Tune's experiment, the Optuna study, ``search.json``: the config it
started with) and its MLflow runs. :func:`plan` decides from them whether the search starts or resumes:

* new: refused when either record exists (``--resume`` continues it, ``--force-new`` discards it);
* ``--resume``: continues Tune's experiment, with the config it started with (any other is refused, naming
  each changed field); a search that already finished is left as it is (:class:`SearchFinished`). A search that
  left records but never checkpointed a trial (its driver died within a second, or ``runs/`` is gone) is started
  again from the beginning when nothing of it finished; when trials did finish, only ``--force-new`` goes on;
* ``--force-new``: deletes ``runs/NAME``, the search's MLflow runs and the model versions registered under them,
  then starts anew.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket

import optuna
from ray import tune

from pann.approximation.catalog import relu_for_precision
from pann.data import NUM_CLASSES
from pann.files import write_bytes_atomic
from pann.models.builders import build_model
from search.config import SearchConfig, field_path
from search.space import measurable_alphas
from search.splits import Splits
from tracking.recorder import discard_runs
from tracking.records import finished_search, recorded_search
from tracking.stores import check_reachable

logger = logging.getLogger(__name__)

RECORDED_CONFIG = "search.json"


class SearchError(ValueError):
    """A search that cannot start or resume."""


class SearchFinished(Exception):
    """``--resume`` of a search that already ran to its end: nothing to do, nothing changed."""


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) must answer within seconds: Ray itself waits
    many minutes for a cluster that is not there."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SearchError(f"--address {address}: nothing answers at {host}:{port} "
                          f"({exc.strerror or exc}); start the cluster (ray start --head) or fix the address") from None


def _as_json(search: SearchConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(search), default=str, sort_keys=True))


def record_config(search: SearchConfig) -> None:
    """Keep the config a search starts with beside its Tune experiment (what ``--resume`` compares with)."""
    write_bytes_atomic(search.run_dir / RECORDED_CONFIG, json.dumps(_as_json(search), indent=2).encode())


def check_same_config(search: SearchConfig) -> None:
    """A resume runs the config its search started with: any changed field (the budget too: Tune keeps the
    number of trials and the time budget it started with) is refused, each named with both values."""
    path = search.run_dir / RECORDED_CONFIG
    if not path.is_file():
        logger.warning("search %s has no recorded config (%s): its config cannot be compared", search.name, path)
        return
    recorded, now = json.loads(path.read_text()), _as_json(search)
    changed = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key), now.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):  # a section: name the fields that changed in it
            changed += [f"{field_path(key)}.{sub}: {before.get(sub)!r} when it started, {after.get(sub)!r} now"
                        for sub in sorted(set(before) | set(after)) if before.get(sub) != after.get(sub)]
        else:
            changed.append(f"{field_path(key)}: {before!r} when it started, {after!r} now")
    if changed:
        raise SearchError(f"--resume with a changed config ({'; '.join(changed)}): a search resumes with the "
                          "config it started with; restore it, or give the changed search another name")


def _finished_in_optuna(search: SearchConfig) -> int:
    path = search.run_dir / "optuna.db"
    if not path.is_file():
        return 0
    try:
        study = optuna.load_study(study_name=search.name, storage=f"sqlite:///{path}")
    except KeyError:  # the database was created, the study not yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _discard(search: SearchConfig, mlflow_runs: list[str]) -> None:
    if search.run_dir.exists():
        shutil.rmtree(search.run_dir)
    discard_runs(search.tracking_uri, mlflow_runs)
    logger.info("search %s: discarded %s and %d MLflow run(s)", search.name, search.run_dir, len(mlflow_runs))


def plan(search: SearchConfig, resume: bool, force_new: bool) -> bool:
    """Whether the search resumes Tune's experiment (True) or starts (False), after refusing what cannot go
    on and discarding what ``--force-new`` (or a search that never finished a trial) leaves behind."""
    recorded = recorded_search(search.tracking_uri, search.experiment, search.name)
    runs, finished = recorded or ([], 0)
    where = " and ".join(([f"{search.run_dir}"] if search.run_dir.exists() else []) +
                         ([f"MLflow experiment {search.experiment!r}"] if recorded else []))
    if force_new:
        if where:
            _discard(search, runs)
        return False
    done = finished_search(search.tracking_uri, search.experiment, search.name) if resume else None
    if done:
        raise SearchFinished(f"search {search.name!r} already finished (MLflow parent run {done}): nothing to "
                             f"resume, nothing changed; its answer: pann export --run-id {done}; to run it again: "
                             "--force-new")
    if resume and tune.Tuner.can_restore(str(search.run_dir)):
        check_same_config(search)
        return True
    if resume and not where:
        raise SearchError(f"nothing to resume: no search {search.name!r} in {search.storage} or in MLflow "
                          f"experiment {search.experiment!r}")
    if resume:
        finished += _finished_in_optuna(search)
        if finished:
            raise SearchError(f"nothing to resume: search {search.name!r} has no Ray Tune experiment in "
                              f"{search.run_dir}, though {where} hold(s) {finished} finished trial(s); pass "
                              "--force-new to discard them and start anew")
        logger.info("search %s never finished a trial: starting it from the beginning", search.name)
        _discard(search, runs)
        return False
    if where:
        raise SearchError(f"search {search.name!r} already exists ({where}); pass --resume to continue it, "
                          "--force-new to discard it and start anew, or give the search another name")
    return False


def check_inputs(search: SearchConfig) -> None:
    """The tracking store answers, the split sizes fit the data, the weights load into the model."""
    check_reachable(search.tracking_uri)
    Splits.for_search(search)
    if search.weights:  # a corrupt file or another model's fails here
        try:
            build_model(search.model, NUM_CLASSES[search.dataset], search.weights)
        except (ValueError, RuntimeError, OSError) as exc:
            raise SearchError(f"backbone.weights: {exc}") from exc


def prepare_approximations(search: SearchConfig) -> None:
    """Solve (or find in the cache) the ReLU approximation of every alpha the trials will measure."""
    alphas = measurable_alphas(dict(search.space), search.neighbours)
    logger.info("preparing ReLU approximations for alpha %g..%g", alphas[0], alphas[-1])
    for alpha in alphas:
        relu_for_precision(alpha, workers=os.cpu_count())
