"""The search's parts on real Optuna and MLflow, without a Ray cluster: the traps of
../shared/notes/ray-optuna-mlflow.md that can be shown on one component at a time."""

import json
import pickle

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search import config
from search.callback import ProgressCallback, TrackingCallback
from ray.tune.search.optuna import OptunaSearch

from search.runner import check_resources, groups_of, strategy_of, tune_config
from search.space import param_space
from search.strategies.optuna_study import DUPLICATE, OptunaSearcher
from tracking.recorder import SearchRecorder
from tracking.records import trial_points
from tracking.stores import TrackingUnavailable, check_reachable


def searcher(tmp_path, name="s") -> OptunaSearcher:
    distributions = OptunaSearch.convert_search_space(param_space({"alpha": {"low": 5, "high": 9},
                                                                   "scope": ["layer", "global"]}))
    return OptunaSearcher(distributions, {}, ["precision_bits", "accuracy"], ["minimize", "maximize"],
                          f"sqlite:///{tmp_path / 'optuna.db'}", name, seed=0, target_accuracy=0.8)


def restored_from(path) -> OptunaSearcher:
    """A searcher as Tune restores one: unpickled, then its checkpoint read."""
    restored = OptunaSearcher.__new__(OptunaSearcher)
    restored.restore(str(path))
    return restored


def test_searcher_keeps_two_objectives_prunes_unfinished_and_constrains(tmp_path):
    s = searcher(tmp_path)
    for trial in ("pruned", "feasible", "infeasible", "failed"):
        point = s.suggest(trial)
        assert 5 <= point["alpha"] <= 9 and point["scope"] in ("layer", "global")
    # An intermediate result (what ASHA leaves behind) must not complete the Optuna trial.
    s.on_trial_complete("pruned", {"precision_bits": 5.0, "accuracy": 0.95, "epoch": 1})
    s.on_trial_complete("feasible", {"precision_bits": 8.0, "accuracy": 0.85, "final": 1})
    s.on_trial_complete("infeasible", {"precision_bits": 6.0, "accuracy": 0.5, "final": 1})
    s.on_trial_complete("failed", None, error=True)

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    measured = [t for t in study.trials if DUPLICATE not in t.user_attrs]  # the points the four trials measure
    states = [t.state for t in measured]
    # A failed trial stays RUNNING: a resume may run it again (a lost node's trial); the search's end fails it.
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    # The infeasible trial would dominate in precision; the constraint keeps it off the front.
    assert [t.values for t in study.best_trials] == [[8.0, 0.85]]
    assert measured[2].constraints == {"accuracy": pytest.approx(0.3)}
    s.on_trial_complete("failed", {"precision_bits": 7.0, "accuracy": 0.9, "final": 1})  # its rerun finished
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[
        measured[3].number].state == optuna.trial.TrialState.COMPLETE


def test_a_point_the_sampler_repeats_is_told_the_earlier_outcome_not_measured_again(tmp_path):
    distributions = OptunaSearch.convert_search_space(param_space({"alpha": [6, 7]}))
    s = OptunaSearcher(distributions, {}, ["precision_bits", "accuracy"], ["minimize", "maximize"],
                       f"sqlite:///{tmp_path / 'optuna.db'}", "d", seed=0, target_accuracy=0.8)
    first, second = s.suggest("a"), s.suggest("b")
    assert {first["alpha"], second["alpha"]} == {6, 7}  # the second is never the point the first is measuring
    s.on_trial_complete("a", {"precision_bits": float(first["alpha"]), "accuracy": 0.9, "final": 1})
    s.on_trial_complete("b", {"precision_bits": float(second["alpha"]), "accuracy": 0.7, "epoch": 1})  # pruned
    third = s.suggest("c")  # both points measured: after its tries the searcher measures one again
    assert third["alpha"] in (6, 7)
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    repeats = [t for t in study.trials if DUPLICATE in t.user_attrs]
    assert len(repeats) == 99 and len(study.trials) == 3 + 99
    measured = {t.number: t for t in study.trials if DUPLICATE not in t.user_attrs}
    for t in repeats:
        earlier = measured[t.user_attrs[DUPLICATE]]
        assert t.params == earlier.params and t.state == earlier.state
        assert t.values == earlier.values and t.constraints == earlier.constraints


def test_searcher_and_callback_survive_tune_checkpointing(tmp_path):
    s = searcher(tmp_path)
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    restored = restored_from(tmp_path / "searcher.pkl")
    assert restored.target_accuracy == 0.8 and "a" in restored.trials
    search = config.from_dict({"name": "t", "target_accuracy": 0.5,
                               "backbone": {"dataset": "synthetic", "validation_size": 100},
                               "space": {"alpha": [6, 7], "epochs": [1]}})
    callback = pickle.loads(pickle.dumps(TrackingCallback(search)))
    assert callback.search == search


def test_param_space_choices_constants_and_ranges():
    space = param_space({"alpha": {"low": 5, "high": 9}, "scope": ["layer"], "margin": [1.0, 1.1],
                         "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}})
    assert space["scope"] == "layer"
    assert isinstance(space["margin"], tune.search.sample.Categorical)
    assert (space["alpha"].lower, space["alpha"].upper) == (5, 10)  # randint excludes its upper end
    assert isinstance(space["weight_decay"].get_sampler(), tune.search.sample.LogUniform)


def test_impossible_resources_are_refused():
    search = config.from_dict({"name": "t", "target_accuracy": 0.5, "budget": {"cpus_per_trial": 4,
                                                                                "gpus_per_trial": 0.5},
                               "backbone": {"dataset": "synthetic", "validation_size": 100},
                               "space": {"alpha": [6, 7], "epochs": [1]}})
    with pytest.raises(config.SearchConfigError) as err:
        check_resources(search, {"CPU": 2.0})
    assert [p.split(":")[0] for p in err.value.problems] == ["budget.cpus_per_trial", "budget.gpus_per_trial"]
    check_resources(search, {"CPU": 8.0, "GPU": 1.0})


def test_recorder_nests_reuses_and_closes_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SearchRecorder(uri, "exp")
    parent = recorder.start_search("search-a", {"target_accuracy": 0.8, "space": {"alpha": [6, 7], "epochs": [1]}})
    done = recorder.start_trial("t1", {"alpha": 7, "scope": "layer"})
    recorder.log_metrics("t1", {"accuracy": 0.9, "epoch": 1, "curve": [1, 2], "note": "text"}, step=1)
    recorder.log_curve("t1", [{"alpha": 6.0, "accuracy": 0.7, "depth": 8}, {"alpha": 7.0, "accuracy": 0.9,
                                                                             "depth": 10}])
    recorder.finish_trial("t1", "FINISHED")
    recorder.start_trial("t2", {"alpha": 6})
    recorder.finish_trial("t2", "FAILED", error="Traceback ...\nValueError: boom")
    recorder.start_trial("t3", {"alpha": 8})  # its process dies: never finished

    # A resumed driver finds the same parent and trial runs instead of opening new ones.
    again = SearchRecorder(uri, "exp")
    assert again.start_search("search-a", {}) == parent
    assert again.start_trial("t1", {"alpha": 7}) == done
    again.finish_trial("t1", "FINISHED")
    assert again.close_dangling() == 1
    again.finish_search()

    client = MlflowClient(uri)
    runs = {r.data.tags["pann.trial_id"]: r for r in client.search_runs(
        [again.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'")}
    assert {k: r.info.status for k, r in runs.items()} == {"t1": "FINISHED", "t2": "FAILED", "t3": "KILLED"}
    assert runs["t2"].data.tags["pann.error"].endswith("ValueError: boom")
    assert runs["t1"].data.metrics["accuracy"] == 0.9 and "curve" not in runs["t1"].data.metrics
    assert client.get_run(parent).info.status == "FINISHED"
    points = trial_points(client, parent)
    assert sorted((p.alpha, p.accuracy, p.depth) for p in points) == [(6.0, 0.7, 8), (7.0, 0.9, 10)]
    # Artifacts land beside the database, not in the working directory's ./mlruns.
    assert client.get_experiment(again.experiment_id).artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_unreachable_tracking_server_is_reported():
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        check_reachable("http://127.0.0.1:9", timeout_s=2)


def test_an_orphan_killed_inside_ask_is_adopted_with_every_parameter(tmp_path):
    # The driver died inside Study.ask: the trial exists, RUNNING, but only some of its parameters were written.
    # Adopted as it is, Tune would run it with the space's unresolved domains as its config.
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                directions=["minimize", "maximize"])
    study.ask({"alpha": optuna.distributions.IntDistribution(5, 9)})
    s = searcher(tmp_path)
    point = s.suggest("resumed")
    assert point["optuna_trial"] == 0 and set(point) == {"alpha", "scope", "optuna_trial"}, point
    assert 5 <= point["alpha"] <= 9 and point["scope"] in ("layer", "global")
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.params == {k: v for k, v in point.items() if k != "optuna_trial"}


def test_resumed_searcher_adopts_a_trial_asked_before_the_crash(tmp_path):
    s = searcher(tmp_path)
    assert s.suggest("a")["optuna_trial"] == 0
    s.save(str(tmp_path / "searcher.pkl"))
    orphan = s.suggest("lost")  # asked after the last checkpoint; the driver then dies
    restored = restored_from(tmp_path / "searcher.pkl")
    assert restored.suggest("b") == orphan
    restored.on_trial_complete("b", {"precision_bits": 7.0, "accuracy": 0.9, "final": 1})
    fresh = restored.suggest("c")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    # No trial asked beyond the adopted one but the new point's (and the sampler's repeats, told and never run).
    measured = [t for t in study.trials if DUPLICATE not in t.user_attrs]
    assert [t.number for t in measured] == [0, 1, fresh["optuna_trial"]]
    assert [t.state for t in measured] == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                                           optuna.trial.TrialState.RUNNING]


def _tiny_data(tmp_path) -> dict:
    return {"name": "t", "target_accuracy": 0.5, "storage": str(tmp_path / "runs"),
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "backbone": {"dataset": "synthetic", "validation_size": 100},
            "space": {"alpha": [6, 7], "epochs": [1, 2]}}


def tiny_search(tmp_path, **search_section) -> config.SearchConfig:
    search = config.from_dict({**_tiny_data(tmp_path), "search": search_section})
    search.run_dir.mkdir(parents=True)
    return search


@pytest.mark.parametrize("depth", [False, True])
def test_objectives_go_to_the_searcher_and_asha_gets_its_own_metric(tmp_path, depth):
    search = tiny_search(tmp_path, depth_objective=depth)
    tc = tune_config(search, strategy_of(search, groups_of(search)))
    assert tc.metric is None and tc.mode is None  # a metric here would make the study single-objective
    assert tc.search_alg.metrics == ["precision_bits", "accuracy"] + (["depth"] if depth else [])
    assert [d.name for d in tc.search_alg.study.directions] == ["MINIMIZE", "MAXIMIZE"] + (["MINIMIZE"] if depth
                                                                                          else [])
    assert isinstance(tc.scheduler, ASHAScheduler)
    assert (tc.scheduler.metric, tc.scheduler._max_t) == ("accuracy", 3)
    fifo = tiny_search(tmp_path / "b", early_stopping=False)
    assert isinstance(tune_config(fifo, strategy_of(fifo, groups_of(fifo))).scheduler, FIFOScheduler)


def test_the_population_score_ranks_feasible_above_infeasible_and_cheaper_above_dearer(tmp_path):
    from search.trial import score

    search = tiny_search(tmp_path)  # target 0.5
    target = search.validation_target
    ranked = [score(search, target - 0.2, 10), score(search, target - 0.01, 10), score(search, 1.0, 200),
              score(search, target, 150), score(search, target + 0.1, 100)]
    assert ranked[0] < ranked[1] < 1 < ranked[2] < ranked[3] < ranked[4] <= 2


def test_a_network_keeps_its_reports_by_epoch_and_a_report_replaces_those_after_it(tmp_path):
    from search.backbones import network_reports, record_report

    state = tmp_path / "net-a" / "training"
    state.mkdir(parents=True)
    for epoch, accuracy in [(1, 0.5), (2, 0.6), (3, 0.7), (2, 0.65), (3, 0.75), (10, 0.8)]:  # a retry from epoch 1
        record_report(state, epoch, accuracy)
    (tmp_path / "net-a" / "reports.json").write_bytes((state / "reports.json").read_bytes())
    assert network_reports(tmp_path / "net-a" / "backbone.pt") == [0.5, 0.65, 0.75, 0.8]  # 10 after 3, not before
    assert json.loads((state / "reports.json").read_text())["network"] == "net-a"
    assert network_reports(tmp_path / "net-b" / "backbone.pt") == network_reports(None) == []


def test_callback_records_pruned_trials_as_killed(tmp_path):
    search = tiny_search(tmp_path)
    callback = TrackingCallback(search)
    callback.setup()
    trials = {name: Trial("run_trial", config={"alpha": 7, "optuna_trial": i}, trial_id=name, stub=True)
              for i, name in enumerate(("pruned", "done"))}
    for trial in trials.values():
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, {"accuracy": 0.4, "epoch": 1, "training_iteration": 1})
    trials["pruned"].update_last_result({"accuracy": 0.4, "epoch": 1})
    callback.on_trial_complete(0, [], trials["pruned"])
    trials["done"].update_last_result({"final": 1, "accuracy": 0.8, "precision_bits": 7.0, "trained_backbone": 1,
                                     "backbone": "/store/b.pt", "spec": json.dumps({"format": "pann-spec"}),
                                     "curve": json.dumps([{"alpha": 7.0, "accuracy": 0.8, "depth": 7}])})
    callback.on_trial_complete(0, [], trials["done"])
    client = MlflowClient(search.tracking_uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`pann.trial_id` LIKE 'optuna-%'")}
    assert {k: r.info.status for k, r in runs.items()} == {"pruned": "KILLED", "done": "FINISHED"}
    assert runs["done"].data.tags["pann.backbone"] == "/store/b.pt"
    assert {a.path for a in client.list_artifacts(runs["done"].info.run_id)} == {"spec.json", "curve.json"}


def test_progress_line_counts_trials_and_keeps_the_cheapest_feasible_point(tmp_path):
    search = tiny_search(tmp_path)
    lines = []
    callback = pickle.loads(pickle.dumps(ProgressCallback(search, None)))  # picklable, for Tune
    callback.report = lines.append
    results = [{"final": 1, "accuracy": 0.4, "precision_bits": 6.0}, {"final": 1, "accuracy": 0.8,
                                                                      "precision_bits": 7.0},
               {"accuracy": 0.9, "epoch": 1}]  # the last one was stopped early: not a point
    trials = [Trial("run_trial", config={"alpha": 7}, trial_id=f"t{i}", stub=True) for i in range(3)]
    for trial, result in zip(trials, results):
        trial.update_last_result(result)
        callback.on_trial_complete(0, trials, trial)
    assert len(lines) == 3 and lines[0].startswith("1/20 trials done") and "none feasible yet" in lines[0]
    assert "best feasible alpha 7 at 80.00%" in lines[1] and "left" in lines[1]
    assert lines[2].startswith("3/20 trials done") and "best feasible alpha 7 at 80.00%" in lines[2]
    # With a time budget the estimate is what is left of it when the trials would take longer.
    budgeted = ProgressCallback(config.from_dict({**_tiny_data(tmp_path / "b"), "budget": {"time_s": 60}}), None)
    budgeted.done, budgeted.started = 1, budgeted.started - 30.5  # 30 s for 1 trial of 20: 9.5 min at that pace
    assert budgeted._line(1).endswith("0m30s elapsed, ~0m29s left")


def test_an_error_the_driver_did_not_handle_is_printed_before_it_exits(capfd):
    from search.supervisor import supervised

    def work():
        raise RuntimeError("the trial's actor died twice")

    deaths = []
    assert supervised(work, deaths.append) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: the trial's actor died twice" in err
    assert deaths == []  # the driver said how it ended: nothing to close for it
    assert supervised(lambda: 0, deaths.append) == 0 and deaths == []
