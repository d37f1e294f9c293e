"""What a search does with an earlier run of itself, decided before Ray starts (:mod:`search.preflight`), and how
it closes the Optuna trials a time budget cut off. Real Optuna, MLflow and Tune's own test for a resumable
experiment; no Ray instance (issue 10, cases 4, 7, 8 and the time budget of case 10)."""

import json
import socket

import optuna
import pytest
import yaml

from search import config, preflight
from search.preflight import SearchError, plan
from tests.helpers import write_config
from tracking.recorder import SearchRecorder
from tracking.records import recorded_search


@pytest.fixture
def search(tmp_path):
    path = write_config(tmp_path, "s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return config.load(path)


def leave_mlflow_runs(search, finished: int) -> list[str]:
    recorder = SearchRecorder(search.tracking_uri, search.experiment)
    recorder.start_search(search.name, {"target_accuracy": search.target_accuracy})
    for n in range(finished):
        recorder.start_trial(f"optuna-{n}", {"alpha": 6})
        recorder.finish_trial(f"optuna-{n}", "FINISHED")
    recorder.finish_search("KILLED")
    return recorded_search(search.tracking_uri, search.experiment, search.name)[0]


def leave_a_study(search) -> None:
    """What a driver killed within a second leaves: the Optuna database, no Tune experiment."""
    search.run_dir.mkdir(parents=True)
    optuna.create_study(study_name=search.name, storage=f"sqlite:///{search.run_dir / 'optuna.db'}")


def test_a_search_that_never_finished_a_trial_is_started_again_by_resume(search):
    leave_a_study(search)
    leave_mlflow_runs(search, finished=0)
    with pytest.raises(SearchError, match=r"already exists \(.*runs/s and MLflow experiment 'cluster-test'\); "
                                          r"pass --resume to continue it, --force-new"):
        plan(search, resume=False, force_new=False)
    assert plan(search, resume=True, force_new=False) is False  # starts anew...
    assert not search.run_dir.exists()  # ...after discarding what the dead start left
    assert recorded_search(search.tracking_uri, search.experiment, search.name) is None
    with pytest.raises(SearchError, match="nothing to resume: no search 's'"):
        plan(search, resume=True, force_new=False)


def test_runs_gone_while_mlflow_has_finished_trials_needs_force_new(search):
    runs = leave_mlflow_runs(search, finished=2)
    with pytest.raises(SearchError, match=r"nothing to resume: .* hold\(s\) 2 finished trial\(s\); pass --force-new"):
        plan(search, resume=True, force_new=False)
    assert recorded_search(search.tracking_uri, search.experiment, search.name)[0] == runs  # nothing discarded
    assert plan(search, resume=False, force_new=True) is False
    assert recorded_search(search.tracking_uri, search.experiment, search.name) is None
    assert not SearchRecorder(search.tracking_uri, search.experiment).search_exists(search.name)


def test_resume_refuses_any_changed_field_naming_both_values(search, tmp_path):
    search.run_dir.mkdir(parents=True)
    (search.run_dir / "tuner.pkl").write_bytes(b"")  # what Tune.can_restore looks for
    preflight.record_config(search)
    assert plan(search, resume=True, force_new=False) is True
    data = yaml.safe_load((tmp_path / "s.yaml").read_text())
    data["target_accuracy"] = 0.5
    data["budget"]["trials"] = 6
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    edited = config.load(tmp_path / "s.yaml")
    with pytest.raises(SearchError) as refused:
        plan(edited, resume=True, force_new=False)
    for changed in ("budget.trials: 4 when it started, 6 now", "target_accuracy: 0.3 when it started, 0.5 now"):
        assert changed in str(refused.value)
    assert json.loads((search.run_dir / "search.json").read_text())["target_accuracy"] == 0.3


def test_an_address_where_nothing_listens_fails_within_seconds(tmp_path, capsys, monkeypatch):
    import signal

    from search.cli import main

    monkeypatch.setenv("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # what pann search sets, restored after the test
    cfg = write_config(tmp_path, "far", f"sqlite:///{tmp_path / 'mlflow.db'}")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connections are refused
            code = main(["search", str(cfg), "--address", f"127.0.0.1:{port}"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"pann search: error: --address 127.0.0.1:{port}: nothing answers at "
                                         f"127.0.0.1:{port}"), line
    # Refused before Ray starts (where it waited about 14 minutes) and before anything is written.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    with pytest.raises(SearchError, match="expected auto, HOST:PORT"):
        preflight.check_address("nowhere")


def test_trials_a_time_budget_stopped_are_pruned_in_optuna(search, tmp_path):
    from search.runner import _ending, groups_of, strategy_of

    search.run_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=search.name, storage=f"sqlite:///{search.run_dir / 'optuna.db'}",
                                directions=["minimize", "maximize"])
    running = study.ask()
    budget = config.from_dict({**yaml.safe_load((tmp_path / "s.yaml").read_text()),
                               "budget": {"trials": 4, "time_s": 5}})
    strategy = strategy_of(budget, groups_of(budget))
    assert _ending(budget, strategy, [], seconds=6) == "budget"
    strategy.close_unfinished("budget")
    assert study.trials[running.number].state == optuna.trial.TrialState.PRUNED
    # Stopped before its trials did, within the budget: interrupted, its trials left RUNNING for --resume.
    interrupted = study.ask()
    assert _ending(budget, strategy, [], seconds=1) == "interrupted"
    assert study.trials[interrupted.number].state == optuna.trial.TrialState.RUNNING
