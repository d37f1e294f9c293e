"""Helpers the test modules share: waiting and ports, stopping what a test started, the tiny synthetic search
config, reading a search's MLflow runs, and driving a per-layer walk with a known accuracy function.

Fixtures live in conftest.py; test modules import helpers from here, never from one another.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from search.space import alpha_key
from search.strategies.optuna_study import DUPLICATE
from search.strategies.walk import FINISHED

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is ``ancestor`` or one of its descendants (by the parent PIDs in /proc)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def descendants(ancestor: int) -> list[int]:
    """The processes that descend from ``ancestor`` (a process a test started), by the parent PIDs in /proc."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != ancestor and descends_from(pid, ancestor)]


def stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """Stop ``process`` and its process group (started with ``start_new_session``: only what it started):
    SIGTERM, then SIGKILL to what is left after ``grace_s`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what SIGTERM left: the group's Ray processes
    except ProcessLookupError:
        pass
    process.wait(30)


def write_config(folder: Path, name: str, tracking_uri: str, compile: bool = False, **space) -> Path:
    """A tiny search on synthetic data. Eager PANNs unless ``compile``: each training trial starts a new worker,
    where compiling the kernels costs more than the trial (tests/test_compile.py tests the compiled kernels)."""
    data = {"name": name, "target_accuracy": 0.3,
            "backbone": {"model": "resnet20", "dataset": "synthetic", "validation_size": 100,
                         "calibration_size": 100},
            "training": {"batch_size": 16, "train_limit": 256, "lr": 0.05, "amp": False},
            "space": {"alpha": [6, 8], "epochs": [2], "correction": ["none", "compensate"], **space},
            "budget": {"trials": 4, "concurrency": 2, "max_failures": 0},
            "search": {"seed": 0, "early_stopping": False, "neighbours": 1, "compile": compile},
            "storage": str(folder / "runs"), "tracking": {"uri": tracking_uri, "experiment": "cluster-test"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def child_runs(client: MlflowClient, search: str) -> tuple:
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                f"tags.`pann.search` = '{search}'")
    assert len(parent) == 1, "one parent run per search"
    children = client.search_runs([parent[0].info.experiment_id],
                                  f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent[0].info.run_id}'")
    return parent[0], children



def tune_records(folder: Path) -> dict[int, str]:
    """Tune's record of each trial, by Optuna trial number: ``final`` (its last report), ``error`` or
    ``unfinished``."""
    records = {}
    for trial in (t for t in folder.iterdir() if (t / "params.json").is_file()):
        results = trial / "result.json"
        lines = results.read_text().splitlines() if results.is_file() else []
        number = json.loads((trial / "params.json").read_text())["optuna_trial"]
        records[number] = "final" if any(json.loads(line).get("final") for line in lines) else \
            "error" if (trial / "error.txt").is_file() else "unfinished"
    return records


def three_records(folder: Path, name: str) -> dict[int, tuple[str, str, str]]:
    """(Optuna state, MLflow run status, Tune record) of every Optuna trial of search ``name``."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'runs' / name / 'optuna.db'}")
    _, children = child_runs(MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"), name)
    mlflow = {int(c.data.tags["pann.trial_id"].removeprefix("optuna-")): c.info.status for c in children}
    assert len(mlflow) == len(children), "one MLflow run per trial"
    tune = tune_records(folder / "runs" / name)
    # A study trial that repeated an earlier one's point was told its outcome and never run (no Tune trial, no run).
    return {t.number: (t.state.name, mlflow.get(t.number), tune.get(t.number)) for t in study.trials
            if DUPLICATE not in t.user_attrs}


def duplicate_steps(folder: Path, name: str) -> list[tuple[str, str]]:
    """(trial, metric) pairs whose MLflow history holds a step twice."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = []
    for run in child_runs(client, name)[1]:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            if len(steps) != len(set(steps)):
                found.append((run.data.tags["pann.trial_id"], key))
    return found


# Per-layer walks driven by a known accuracy function (no Ray needed).

def accuracy(point: dict) -> float:
    # Layer "a" needs alpha >= 7, "b" >= 5, "c" tolerates anything: each missing bit costs 10 points.
    need = {"a": 7, "b": 5, "c": 0}
    return 0.95 - 0.1 * sum(max(0, need[g] - point[alpha_key(g)]) for g in need)


def drive(searcher, concurrency: int = 1, score=accuracy, finishing=0, loss=None, extra=None) -> list[dict]:
    """Run the searcher to its end; ``finishing`` is the index among the running trials of the one that finishes
    next (0: the oldest, -1: the newest); ``loss(point)``, when given, is reported as the trial's loss, and
    ``extra(point)`` (a dict) with every result."""
    asked, running = [], []
    for number in range(500):
        while len(running) < concurrency:
            point = searcher.suggest(f"t{number}-{len(running)}")
            if point is None or point == FINISHED:
                break
            running.append((f"t{number}-{len(running)}", point))
            asked.append(point)
        if not running:
            return asked
        trial_id, point = running.pop(finishing)
        searcher.on_trial_complete(trial_id, {"final": 1, "accuracy": score(point),
                                              **({"loss": loss(point)} if loss else {}),
                                              **(extra(point) if extra else {})})
    raise AssertionError("the greedy search did not finish")


LADDER = [4, 5, 5.625, 6, 7, 8]


def edge(point: dict) -> float:
    """An accuracy near the target's edge (0.88) that does not fall steadily with the alphas, as measured ones do:
    0.3 points per rung below 8 over six groups, plus up to 1.2 points that depend on the exact point."""
    import zlib

    alphas = [point[alpha_key(g)] for g in "abcdef"]
    noise = zlib.crc32(repr(alphas).encode()) % 100 / 100 * 0.012
    return 0.90 - 0.003 * sum(5 - LADDER.index(a) for a in alphas) + noise


def uneven(point: dict) -> float:
    """The damage of a point: group "a" loses 2 points per rung under 8, "b" 0.5, "c" and "d" 0.1."""
    return sum(rate * (5 - LADDER.index(point[alpha_key(g)]))
               for g, rate in {"a": 0.02, "b": 0.005, "c": 0.001, "d": 0.001}.items())
