"""A search's records stay true when it is run again, twice at once, or discarded, and its inputs are refused before
anything is written (issue 21): real Ray, Optuna, MLflow (a sqlite store with its model registry), the ``pann``
command in a subprocess. The module's search is a per-layer search with two more searched dimensions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from pann.models.builders import build_model, save_weights
from search import config
from search.lock import search_lock
from search.preflight import SearchError, check_same_config, record_config
from search.strategies.optuna_study import DUPLICATE
from tests.helpers import child_runs

pytestmark = pytest.mark.slow  # searches on real Ray: minutes (pytest -m 'not slow' skips them)


def pann(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The search ``joint`` run to its end: an alpha per stage, the interval scope and the correction searched."""
    folder = tmp_path_factory.mktemp("records")
    weights = folder / "resnet20.pt"
    save_weights(build_model("resnet20"), weights)
    cfg = folder / "joint.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "joint", "target_accuracy": 0.05,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "weights": str(weights), "validation_from": "test",
                     "validation_size": 100, "calibration_size": 100},
        "space": {"alpha": [5, 6, 7], "epochs": [0], "scope": ["layer", "global"], "correction": ["none", "compensate"]},
        "budget": {"trials": 5, "concurrency": 2, "max_failures": 0},
        "search": {"granularity": "stage", "compile": False, "seed": 0, "early_stopping": False},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}",
                                                      "experiment": "records"}}))
    done = pann("search", str(cfg), cwd=folder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return folder, cfg


def snapshot(folder: Path) -> dict:
    """Everything a rerun could add to: the parent's metric histories, the trial runs, the model versions."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    parent, children = child_runs(client, "joint")
    return {"status": parent.info.status,
            "metrics": {k: len(client.get_metric_history(parent.info.run_id, k)) for k in parent.data.metrics},
            "children": sorted((c.info.run_id, c.info.status) for c in children),
            "versions": sorted((v.version, v.run_id) for v in client.search_model_versions("name = 'joint'"))}


def test_per_layer_alphas_are_searched_with_the_other_dimensions(finished):
    folder, _ = finished
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{folder / 'runs' / 'joint' / 'optuna.db'}")
    trials = [t for t in study.trials if DUPLICATE not in t.user_attrs]  # the sampler's repeats are not run
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    stages = {"alpha.stem", "alpha.layer1", "alpha.layer2", "alpha.layer3"}
    assert all(set(t.params) == stages | {"scope", "correction"} for t in trials)
    # Warm-started with the uniform points, every group at one alpha; the sampler chose the other dimensions.
    assert [sorted({t.params[s] for s in stages}) for t in trials[:3]] == [[7], [6], [5]]
    state = snapshot(folder)
    assert state["status"] == "FINISHED" and [s for _, s in state["children"]] == ["FINISHED"] * 5
    assert len(state["versions"]) == 1


def test_resume_of_a_finished_search_says_so_and_changes_nothing(finished):
    folder, cfg = finished
    before = snapshot(folder)
    again = pann("search", str(cfg), "--resume", cwd=folder)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stdout and "nothing changed" in again.stdout
    assert snapshot(folder) == before


def test_a_second_run_of_a_running_search_is_refused_naming_the_process(finished):
    folder, cfg = finished
    before = snapshot(folder)
    with search_lock(folder / "runs", "joint"):  # this process runs it
        for start in ([], ["--resume"], ["--force-new"]):
            refused = pann("search", str(cfg), *start, cwd=folder)
            assert refused.returncode == 2, refused.stderr[-2000:]
            line = refused.stderr.strip().splitlines()[-1]
            assert "already running" in line and f"process {os.getpid()}" in line, line
    assert snapshot(folder) == before
    assert not (folder / "runs" / ".locks").exists()  # released, nothing left behind


def test_force_new_leaves_no_discarded_answer_in_the_registry(finished):
    folder, cfg = finished
    old = snapshot(folder)
    fresh = pann("search", str(cfg), "--force-new", cwd=folder)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    parent, _ = child_runs(client, "joint")
    (_, old_run), = old["versions"]
    assert old_run != parent.info.run_id
    # Only the new answer is registered: the discarded one's version went with its runs.
    assert [v.run_id for v in client.search_model_versions()] == [parent.info.run_id]
    assert client.get_latest_versions("joint")[0].run_id == parent.info.run_id


@pytest.mark.parametrize("storage", ["/proc/pann-x", "a-file"])
def test_storage_that_cannot_be_a_folder_is_refused_before_anything_is_written(tmp_path, storage):
    (tmp_path / "a-file").write_text("not a folder")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"name": "s", "target_accuracy": 0.5, "storage": storage,
                                   "backbone": {"dataset": "synthetic", "validation_size": 100},
                                   "space": {"alpha": [6, 7], "epochs": [1]}}))
    refused = pann("search", str(cfg), cwd=tmp_path)
    assert refused.returncode == 2
    assert "storage: " in refused.stderr and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_pann_train_refuses_an_empty_config(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    refused = subprocess.run([sys.executable, "-m", "search.cli", "train", "empty.yaml", "--out", "w.pt"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "empty.yaml is empty" in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "w.pt").exists()


def test_a_bad_target_is_blamed_on_the_target_alone():
    with pytest.raises(config.SearchConfigError) as err:
        config.from_dict({"name": "s", "target_accuracy": 1.5, "backbone": {"dataset": "synthetic"},
                          "space": {"alpha": [6, 7], "epochs": [1]}})
    assert [p.split(":")[0] for p in err.value.problems] == ["target_accuracy"]


def test_a_resume_with_an_edited_alpha_names_that_dimension(tmp_path):
    data = {"name": "s", "target_accuracy": 0.5, "storage": str(tmp_path / "runs"),
            "backbone": {"dataset": "synthetic", "validation_size": 100},
            "space": {"alpha": [6, 8], "epochs": [1]}}
    record_config(config.from_dict(data))
    with pytest.raises(SearchError) as err:
        check_same_config(config.from_dict({**data, "space": {"alpha": [6, 7], "epochs": [1]}}))
    assert "space.alpha: [6, 8] when it started, [6, 7] now" in str(err.value)
    assert "epochs" not in str(err.value)
    assert json.loads((tmp_path / "runs" / "s" / "search.json").read_text())["space"]["alpha"] == [6, 8]
