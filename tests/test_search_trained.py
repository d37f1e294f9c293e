"""A trained per-layer search end to end on a local Ray instance with the embedded MLflow store: every candidate
fine-tunes at its own alphas (one per ResNet stage), reports as it trains, ASHA stops the ones that fall behind
(PRUNED in Optuna, KILLED in MLflow, unfinished in Tune), and the answer is the trained network with its spec:
exported and rebuilt, it scores what the search reported."""

import json
import subprocess
import sys

import pytest
import torch

from pann.conversion import spec as pann_spec
from pann.conversion.flow import prepare
from pann.evaluate import accuracy
from pann.models.builders import build_model
from search import config
from search.runner import run_search
from search.space import group_alphas
from search.trial import splits_for
from tests.helpers import three_records

pytestmark = pytest.mark.slow  # searches on real Ray: minutes (pytest -m 'not slow' skips them)

STAGES = ["stem", "layer1", "layer2", "layer3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    search = config.from_dict({
        "name": "trained", "target_accuracy": 0.15,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "validation_from": "test", "validation_size": 100,
                     "confirmation_size": 100, "calibration_size": 100},
        "training": {"batch_size": 32, "train_limit": 512, "epoch_images": 64, "lr": 0.05, "amp": False},
        "space": {"alpha": [6, 5], "epochs": [3], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]},
        # One trial at a time: ASHA's decisions, hence which trials are pruned, do not depend on timing.
        "budget": {"trials": 5, "concurrency": 1, "max_failures": 0},
        "search": {"granularity": "stage", "cost": "levels", "compile": False, "seed": 0, "early_stopping": True,
                   "grace_period": 1},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}",
                                                      "experiment": "trained-test"}})
    return folder, search, run_search(search)


def test_every_candidate_trains_at_its_own_alphas(trained):
    _, search, result = trained
    groups = {p.trial: group_alphas(p.params, _groups(search)) for p in result.points}
    assert groups, "no trial finished"
    for point in result.points:
        stored = torch.load(point.params["backbone"], weights_only=True)["config"]
        alphas = set(groups[point.trial].values())
        if len(alphas) == 1:  # one alpha everywhere trains as the uniform network it is
            assert stored["layer_alphas"] is None and stored["alpha"] == alphas.pop()
        else:
            assert stored["layer_alphas"] == _groups(search).expand(groups[point.trial])
        assert stored["leakage"] == "approximation-aware" and stored["epoch_images"] == 64


def test_pruned_trials_are_pruned_in_all_three_records(trained):
    folder, _, result = trained
    records = three_records(folder, "trained")
    assert len(records) == 5
    assert set(records.values()) <= {("COMPLETE", "FINISHED", "final"), ("PRUNED", "KILLED", "unfinished")}, records
    pruned = [n for n, r in records.items() if r[0] == "PRUNED"]
    assert pruned, "ASHA stopped no trial: the test shows nothing"
    assert len(result.points) == 5 - len(pruned)


def test_the_trained_answer_exported_and_rebuilt_scores_what_the_search_reported(trained, tmp_path):
    folder, search, result = trained
    assert result.answer is not None and result.test_accuracy is not None
    out = tmp_path / "answer"
    done = subprocess.run([sys.executable, "-m", "search.cli", "export", "--run-id", result.parent_run_id, "--out",
                           str(out), "--tracking-uri", search.tracking_uri], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {"answer.json", "answer_spec.json", "answer.png", "backbone.pt"} <= {p.name for p in out.iterdir()}
    assert (out / "answer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = pann_spec.load(out / "answer_spec.json")
    rebuilt = pann_spec.apply(prepare(build_model("resnet20", 10, out / "backbone.pt")), spec, compiled=False)
    assert accuracy(rebuilt, splits_for(search).test) == result.test_accuracy
    # The exported weights are the trained network's, not the pretrained or untrained backbone's.
    assert torch.load(out / "backbone.pt", weights_only=True)["config"]["leakage"] == "approximation-aware"


def _groups(search):
    from search.runner import groups_of
    return groups_of(search)


@pytest.fixture(scope="module")
def synthetic_weights(tmp_path_factory):
    """A backbone that has learnt the synthetic classes, for a walk or a population to lower."""
    from pann.models.builders import save_weights
    from pann.training.trainer import TrainConfig, train

    weights = tmp_path_factory.mktemp("backbone") / "synthetic.pt"
    save_weights(train(TrainConfig(dataset="synthetic", epochs=3, batch_size=32, train_limit=512, validation_size=100,
                                   lr=0.05, augment=False, amp=False), progress=False).model, weights)
    return weights


@pytest.fixture(scope="module")
def lowered(tmp_path_factory, synthetic_weights):
    folder, weights = tmp_path_factory.mktemp("lowered"), synthetic_weights
    search = config.from_dict({
        "name": "lowered", "target_accuracy": 0.3,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "weights": str(weights), "validation_from": "test",
                     "validation_size": 100, "confirmation_size": 100, "calibration_size": 100},
        "training": {"batch_size": 32, "train_limit": 512, "epoch_images": 64, "lr": 0.01, "amp": False},
        # Uniform alpha 2 ruins the network: uniform 6 is the walk's start, from which it steps down group by group.
        "space": {"alpha": [6, 2], "epochs": [1], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]},
        "budget": {"trials": 5, "concurrency": 2, "max_failures": 0},
        "search": {"granularity": "stage", "cost": "levels", "strategy": "lowering", "compile": False, "seed": 0,
                   "early_stopping": False},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}",
                                                      "experiment": "lowered-test"}})
    return search, run_search(search)


def test_each_lowering_step_trains_from_the_network_it_lowers(lowered):
    search, result = lowered
    groups = _groups(search)
    by_alphas = {tuple(sorted(group_alphas(p.params, groups).items())): p for p in result.points}
    steps = [p for p in result.points if p.params.get("initial")]
    assert steps, "the walk took no step"
    for step in steps:
        stored = torch.load(step.params["backbone"], weights_only=True)["config"]
        assert stored["initial"] == step.params["initial"] != stored["pretrained"]
        parent = next(p for p in by_alphas.values() if p.params["backbone"] == step.params["initial"])
        changed = [g for g, a in group_alphas(step.params, groups).items() if group_alphas(parent.params, groups)[g] != a]
        assert len(changed) == 1 and parent.accuracy >= search.validation_target
    assert result.answer is not None and result.test_accuracy is not None
    assert result.answer.params["backbone"] in {p.params["backbone"] for p in result.points}


@pytest.fixture(scope="module")
def population(tmp_path_factory, synthetic_weights):
    folder = tmp_path_factory.mktemp("population")
    search = config.from_dict({
        "name": "population", "target_accuracy": 0.3,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "weights": str(synthetic_weights),
                     "validation_from": "test", "validation_size": 100, "confirmation_size": 100,
                     "calibration_size": 100},
        "training": {"batch_size": 32, "train_limit": 512, "epoch_images": 64, "lr": 0.01, "amp": False},
        # Members start at uniform 6, 2 (which ruins the network) and 6 again; every epoch the worst one takes over
        # the best one's network with one stage lowered. Three members on two CPUs: one waits, paused, in turn.
        "space": {"alpha": [6, 2], "epochs": [3], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]},
        "budget": {"trials": 3, "cpus_per_trial": 1, "max_failures": 0},
        # Each network ends with the mean of its last two reports.
        "search": {"granularity": "stage", "cost": "levels", "strategy": "pbt", "perturbation_interval": 1,
                   "final_reports": 2, "compile": False, "seed": 0, "early_stopping": False},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}",
                                                      "experiment": "population-test"}})
    return folder, search, run_search(search)


def test_a_member_that_takes_over_a_network_trains_it_on_at_its_own_alphas(population):
    folder, search, result = population
    groups = _groups(search)
    assert len(result.points) == 3  # every member to its last epoch
    taken_over = [p for p in result.points if p.params.get("continues")]
    assert taken_over, "no member took over another's network: the test shows nothing"
    for point in taken_over:
        state = torch.load(point.params["backbone"], weights_only=True)
        alphas = group_alphas(point.params, groups)
        assert state["config"]["layer_alphas"] == groups.expand(alphas) or \
            state["config"]["alpha"] == set(alphas.values()).pop()
        # Three epochs in all, the first ones trained by the networks it continues.
        assert len(state["history"]) == 3 and point.params["continues"] != point.params["lineage"]
    assert result.answer is not None and result.test_accuracy is not None


def test_a_network_ends_with_the_mean_of_its_own_last_reports(population):
    folder, search, result = population
    averaged = 0
    for trial in (folder / "runs" / "population").glob("run_trial_*"):
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        final = reports[-1]
        assert final.get("final"), f"{trial.name} ended without its final report"
        # The reports of the network it ended with: since it took over that network, if it did.
        own = [r["accuracy"] for r in reports[:-1] if r["config"]["lineage"] == final["config"]["lineage"]]
        assert own and final["last_accuracy"] == own[-1]
        assert final["accuracy"] == pytest.approx(sum(own[-2:]) / len(own[-2:]), abs=1e-12)
        point = next(p for p in result.points if p.params["lineage"] == final["config"]["lineage"])
        assert point.accuracy == final["accuracy"]  # what the front and the confirmation see
        averaged += len(own) >= 2
    assert averaged, "no network ended with two reports of its own: the test shows nothing"


def test_every_network_of_a_population_has_a_true_run(population):
    from mlflow import MlflowClient

    from tests.helpers import child_runs

    folder, search, result = population
    _, children = child_runs(MlflowClient(search.tracking_uri), "population")
    runs = {c.data.params["lineage"]: c for c in children}
    assert len(runs) == len(children), "one MLflow run per network"
    finished = {p.params["lineage"] for p in result.points}
    for lineage, run in runs.items():
        # A run's params are its network's point; a network given up for another's ends KILLED.
        assert run.info.status == ("FINISHED" if lineage in finished else "KILLED"), (lineage, run.info.status)
        continued = run.data.params.get("continues")
        assert continued is None or continued in runs
    assert len(runs) > len(finished)
    # m0 and m2 both start at uniform 6 (the ladder has two rungs): m2 with the next training seed, another network.
    first = {m: MlflowClient(search.tracking_uri).get_metric_history(runs[m].info.run_id, "train_loss")[0].value
             for m in ("m0", "m2")}
    assert (runs["m0"].data.params["training_seed"], runs["m2"].data.params["training_seed"]) == ("0", "1")
    assert first["m0"] != first["m2"]
    answer = next(c for c in children if c.info.run_id == result.answer.run_id)
    assert answer.data.params["lineage"] == result.answer.params["lineage"]
