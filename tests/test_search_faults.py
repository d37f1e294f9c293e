"""Searches on a local Ray instance with the embedded MLflow store: bad input, a trial killed
mid-training, a killed driver resumed with ``--resume``, an interrupted search and its resume, a search whose
every trial fails. The fault tests compare the three records (Tune, Optuna, MLflow) trial by trial."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient

from search.backbones import network_reports
from search.strategies.optuna_study import DUPLICATE
from tests.helpers import (child_runs, descendants, descends_from, duplicate_steps, three_records, wait_for,
                           write_config)

pytestmark = pytest.mark.slow  # searches on real Ray: minutes (pytest -m 'not slow' skips them)



ROOT = Path(__file__).resolve().parents[1]


def pann(*args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, **kwargs)


def test_invalid_config_lists_every_problem_and_creates_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bad", "target_accuracy": 2, "colour": 1,
                                   "backbone": {"dataset": "synthetic"}, "space": {},
                                   "budget": {"cpus_per_trial": 0}}))
    result = pann("search", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    for field in ("target_accuracy", "colour: unknown field", "space: empty", "budget.cpus_per_trial"):
        assert field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    cfg = write_config(tmp_path, "offline", "http://127.0.0.1:9")
    result = pann("search", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:9 is not reachable" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_impossible_resources_fail_before_mlflow(tmp_path):
    cfg = write_config(tmp_path, "greedy", "")
    data = yaml.safe_load(cfg.read_text())
    data["budget"]["cpus_per_trial"] = 512
    cfg.write_text(yaml.safe_dump(data))
    result = pann("search", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "budget.cpus_per_trial: 512 CPUs per trial" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def training_trial_pid(folder: Path, store: Path, driver: int) -> int | None:
    """PID of the process of the one trial that is training and has a checkpoint Tune knows of (killed now, it
    resumes from that checkpoint), from the ``pid`` Tune adds to every result; None until there is one. The
    driver writes a trial's results seconds after the trial reported them, so what is on disk can lag the trial:
    - the trial's second checkpoint is on disk: Tune registers a checkpoint before it lets the trial train on, so
      the first is registered (the first alone on disk may not be yet);
    - it is the only trial without a final result, and a training state is in the backbone ``store`` (one trial
      at a time: its own), so the trial has not ended its training (killed after that, its retry would find the
      trained backbone and resume nothing), and its process is alive, one the test started."""
    try:
        results = {t: [json.loads(line) for line in t.read_text().splitlines()] for t in folder.glob("*/result.json")}
    except json.JSONDecodeError:  # a line being written
        return None
    unfinished = [(t, lines) for t, lines in results.items() if not any(r.get("final") for r in lines)]
    if len(unfinished) != 1 or not (unfinished[0][0].parent / "checkpoint_000001").is_dir():
        return None
    lines = unfinished[0][1]
    pid = int(lines[-1]["pid"]) if lines else None
    training = any(store.glob("*/training"))
    return pid if pid and training and descends_from(pid, driver) else None


def test_a_killed_trained_search_resumes_without_duplicates_and_its_killed_trial_from_its_checkpoint(tmp_path):
    cfg = write_config(tmp_path, "crash", "", epochs=[3, 4])
    data = yaml.safe_load(cfg.read_text())
    # One trial at a time: with two, the other one may wait for the same backbone, and after the kill
    # whichever takes the backbone's lock first trains it (from scratch when it is not the checkpointed one).
    data["budget"].update(trials=4, concurrency=1, max_failures=2)
    data["training"]["train_limit"] = 512  # epochs long enough to kill a trial between two of them
    # Trained per-layer candidates: each trains at its own alphas (one per stage), from its checkpoint after a kill.
    data["space"].update(leakage=["approximation-aware"], leakage_alpha=["point"])
    # Each ends with the mean of its last 3 reports: the killed trial's reports before the kill count too.
    data["search"].update(granularity="stage", neighbours=0, final_reports=3)
    data["storage"] = "runs"  # relative: must land under the search's working directory
    cfg.write_text(yaml.safe_dump(data))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(cfg)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Kill the trial process once its trial has an epoch checkpoint: Tune retries it from its checkpoint.
        folder, store = tmp_path / "runs" / "crash", tmp_path / "runs" / "backbones"
        victim = wait_for(lambda: training_trial_pid(folder, store, driver.pid), 300,
                          "a training trial's checkpoint")
        os.kill(victim, signal.SIGKILL)

        # Then kill the whole driver once one more trial has finished (the retried one: one trial at a time).
        def finished() -> int:
            if not (tmp_path / "mlflow.db").exists():
                return 0
            try:
                _, children = child_runs(MlflowClient(uri), "crash")
            except AssertionError:
                return 0
            return sum(c.info.status == "FINISHED" for c in children)

        before = finished()
        wait_for(lambda: finished() > before, 400, "a finished trial")
        # The driver is the child of `pann search` (search/supervisor.py), in a process group of its own.
        (child,) = [pid for pid in descendants(driver.pid) if parent_of(pid) == driver.pid]
        os.killpg(child, signal.SIGKILL)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(60)
    # The supervisor closed the records the driver left open, and said so in one line.
    out = out.decode()
    assert driver.returncode == 1 and "stopped after" in out.strip().splitlines()[-1], out[-2000:]
    assert child_runs(MlflowClient(uri), "crash")[0].info.status == "FAILED"

    resumed = pann("search", str(cfg), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "cheapest (alpha) meeting" in resumed.stdout

    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{tmp_path / 'runs' / 'crash' / 'optuna.db'}")
    measured = [t for t in study.trials if DUPLICATE not in t.user_attrs]  # the sampler's repeats are not run
    assert len(measured) == 4, [t.state for t in study.trials]
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    parent, children = child_runs(MlflowClient(uri), "crash")
    assert len(children) == 4 and len({c.data.tags["pann.trial_id"] for c in children}) == 4
    failed = {c.data.tags["pann.trial_id"]: c.data.tags.get("pann.error", "no error recorded")[-1500:]
              for c in children if c.info.status != "FINISHED"}
    assert not failed, (failed, resumed.stdout[-3000:])
    assert parent.info.status == "FINISHED"
    assert max(c.data.metrics.get("resumed_from_epoch", 0) for c in children) >= 1
    # Every trained network kept a report of each of its epochs, the resumed one those before its kill too.
    for backbone in (tmp_path / "runs" / "backbones").glob("*/backbone.pt"):
        epochs = len(torch.load(backbone, weights_only=True)["history"])
        assert len(network_reports(backbone)) == epochs, backbone
    # Case 9: the trials that finished before the kill are not logged again (no step twice in any history).
    assert list(three_records(tmp_path, "crash").values()) == [("COMPLETE", "FINISHED", "final")] * 4
    assert not duplicate_steps(tmp_path, "crash")

    # Running the same search again without --resume is refused; so is resuming an unknown one.
    again = pann("search", str(cfg), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    other = write_config(tmp_path, "never-ran", "")
    missing = pann("search", str(other), "--resume", cwd=tmp_path)
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


@pytest.mark.parametrize("suffix", ["csv", "html"])
def test_pareto_export_from_mlflow_alone(tmp_path, suffix):
    from tracking.recorder import SearchRecorder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, accuracies in (("a", {6: 0.5, 7: 0.8}), ("b", {5: 0.7, 8: 0.9})):
        recorder = SearchRecorder(uri, "pann-search")
        recorder.start_search(name, {"target_accuracy": 0.75})
        recorder.start_trial(f"{name}1", {"alpha": 7})
        recorder.log_curve(f"{name}1", [{"alpha": a, "accuracy": acc, "depth": 2 * a} for a, acc in accuracies.items()])
        recorder.finish_trial(f"{name}1", "FINISHED")
        recorder.finish_search()
    out = tmp_path / f"front.{suffix}"
    result = pann("pareto", "--search", "a", "--search", "b", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 front points of 4 measured" in result.stdout  # alpha 7 (0.8) and 8 (0.9); 5 and 6 miss 0.75
    assert out.is_file()
    bad = pann("pareto", "--search", "a", "--out", str(tmp_path / "front.txt"), cwd=tmp_path)
    assert bad.returncode == 2 and ".csv" in bad.stderr and not (tmp_path / "front.txt").exists()


def test_weights_of_another_model_fail_before_any_trial(tmp_path):
    from pann.models.builders import build_model, save_weights

    weights = tmp_path / "vgg.pt"
    save_weights(build_model("vgg11_bn"), weights)
    cfg = write_config(tmp_path, "wrong-weights", "", epochs=[0])
    data = yaml.safe_load(cfg.read_text())
    data["backbone"]["weights"] = str(weights)
    cfg.write_text(yaml.safe_dump(data))
    result = pann("search", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "backbone.weights:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGINT twice"])
def test_interrupted_search_says_so_exits_130_and_resumes_to_the_end(tmp_path, stop):
    """Ctrl-C, what schedulers send (SIGTERM, to the process by its PID), and an impatient second Ctrl-C 0.7 s
    after the first: each ends the search as the README says, with every record closed as after a single Ctrl-C;
    after that one ``--resume`` finishes it with each trial once in all three records (what a resume does does not
    depend on the signal that stopped the search)."""
    cfg = write_config(tmp_path, "ctrl-c", "")
    data = yaml.safe_load(cfg.read_text())
    data["budget"].update(trials=4, concurrency=1)
    cfg.write_text(yaml.safe_dump(data))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(cfg)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def one_finished() -> bool:
        try:
            return any(c.info.status == "FINISHED" for c in child_runs(MlflowClient(uri), "ctrl-c")[1])
        except (AssertionError, Exception):
            return False

    try:
        wait_for(one_finished, 400, "a finished trial")
        os.kill(driver.pid, signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)
        if stop == "SIGINT twice":
            time.sleep(0.7)
            os.kill(driver.pid, signal.SIGINT)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(60)
    assert driver.returncode == 130, out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pann search: search 'ctrl-c' interrupted after ") and last.endswith(
        "; continue it with --resume"), err[-2000:]
    assert "cheapest" not in out and "SIGTERM received" not in err
    parent, _ = child_runs(MlflowClient(uri), "ctrl-c")
    assert parent.info.status == "KILLED"
    cut = three_records(tmp_path, "ctrl-c")
    print("after the interrupt:", cut)
    # What finished agrees in all three records; a trial cut off is RUNNING in Optuna (the resume runs it), and
    # KILLED in MLflow and unfinished in Tune if it had started.
    assert ("COMPLETE", "FINISHED", "final") in cut.values()
    assert set(cut.values()) <= {("COMPLETE", "FINISHED", "final"), ("RUNNING", "KILLED", "unfinished"),
                                 ("RUNNING", None, None)}

    if stop != "SIGINT":
        return  # its records are closed as after one Ctrl-C: the resume is tested after that one
    # Case 4: a resume with an edited config is refused before Ray starts, naming the field with both values.
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**data, "target_accuracy": 0.5}))
    refused = pann("search", str(edited), "--resume", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "target_accuracy: 0.3 when it started, 0.5 now" in refused.stderr.strip().splitlines()[-1]

    resumed = pann("search", str(cfg), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    parent, _ = child_runs(MlflowClient(uri), "ctrl-c")
    assert parent.info.status == "FINISHED"
    # The resume completed exactly the trials that had not finished: four trials, each once, in all three records.
    assert list(three_records(tmp_path, "ctrl-c").values()) == [("COMPLETE", "FINISHED", "final")] * 4
    assert not duplicate_steps(tmp_path, "ctrl-c")


def test_a_lost_ray_node_ends_the_search_in_one_line_with_its_records_closed(tmp_path):
    """The search's own raylet killed mid-search: Ray ends the driver at once, without Python cleanup; the
    supervising ``pann search`` closes the records and says so. (A resume of a search whose driver died, records
    closed by the supervisor, is tested after the driver's SIGKILL: the killed trained search above.)"""
    cfg = write_config(tmp_path, "lost", "")
    data = yaml.safe_load(cfg.read_text())
    data["budget"].update(trials=4, concurrency=1)
    cfg.write_text(yaml.safe_dump(data))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(cfg)], cwd=tmp_path,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)

    def one_finished() -> bool:
        try:
            return any(c.info.status == "FINISHED" for c in child_runs(MlflowClient(uri), "lost")[1])
        except Exception:  # noqa: BLE001 - the store or the runs are not there yet
            return False

    try:
        wait_for(one_finished, 400, "a finished trial")
        # The raylet of the search's own Ray instance: a process the driver started.
        (raylet,) = [pid for pid in descendants(driver.pid) if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet"]
        os.kill(raylet, signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            for pid in [driver.pid, *descendants(driver.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            driver.wait(60)
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pann search: search 'lost' stopped after ") and last.endswith(
        "continue it with --resume"), err[-3000:]
    parent, children = child_runs(MlflowClient(uri), "lost")
    assert parent.info.status == "FAILED" and "RUNNING" not in {c.info.status for c in children}
    # What finished agrees in all three records; a trial cut off is RUNNING in Optuna (a resume runs it), KILLED in
    # MLflow and unfinished in Tune if it had started.
    cut = three_records(tmp_path, "lost")
    assert ("COMPLETE", "FINISHED", "final") in cut.values()
    assert set(cut.values()) <= {("COMPLETE", "FINISHED", "final"), ("RUNNING", "KILLED", "unfinished"),
                                 ("RUNNING", None, None)}, cut


def test_every_trial_failing_fails_the_search_in_one_line_without_rerunning_a_trial(tmp_path):
    # A learning rate of 1e9 diverges in the first epoch, on a retry too (the training is seeded).
    cfg = write_config(tmp_path, "diverge", "", lr=[1.0e9], epochs=[1])
    data = yaml.safe_load(cfg.read_text())
    data["budget"].update(trials=1, concurrency=1, max_failures=1)
    cfg.write_text(yaml.safe_dump(data))
    result = pann("search", str(cfg), cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pann search: error: every trial failed (1); the first: ") and "loss became" in last
    assert "Traceback" not in result.stderr and "cheapest" not in result.stdout
    records = three_records(tmp_path, "diverge")
    assert list(records.values()) == [("FAIL", "FAILED", "error")], records
    parent, _ = child_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "diverge")
    assert parent.info.status == "FAILED"
    # The retry Tune starts (max_failures 1) stops at once, naming the first attempt's failure.
    errors = [e.read_text() for e in (tmp_path / "runs" / "diverge").glob("*/error.txt")]
    assert len(errors) == 1
    for error in errors:
        assert "TrialCannotSucceed: not run again: its first attempt failed with TrainingDiverged" in error
    assert "the first: '" not in last  # the line itself, not its repr
