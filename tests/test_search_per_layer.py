"""A per-layer search end to end on a local Ray instance with the embedded MLflow store: one alpha per
ResNet stage, the cost objective, uniform warm start, the correction ``batchnorm`` in every trial, confirmation,
and what MLflow records of it."""

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from pann.conversion import spec as pann_spec
from pann.conversion.flow import prepare
from pann.cost.preset import load_preset
from pann.models.builders import build_model, save_weights
from pann.cost.network import network_cost
from search import config
from search.runner import run_search
from search.strategies.optuna_study import DUPLICATE
from tests.helpers import child_runs

pytestmark = pytest.mark.slow  # searches on real Ray: minutes (pytest -m 'not slow' skips them)




STAGES = ["stem", "layer1", "layer2", "layer3"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, mlflow_server):  # noqa: F811 - a real tracking server and model registry
    folder = tmp_path_factory.mktemp("per-layer")
    weights = folder / "resnet20.pt"
    save_weights(build_model("resnet20"), weights)
    search = config.from_dict({
        "name": "stages", "target_accuracy": 0.05,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "weights": str(weights), "validation_from": "test",
                     "validation_size": 100, "confirmation_size": 100, "calibration_size": 100,
                     "batchnorm_size": 100},
        # A ladder: 5.625 bits is the depth-5 rung (degree 15) that whole bits skip.
        "space": {"alpha": [8, 7, 5.625], "epochs": [0], "correction": ["batchnorm"]},
        "budget": {"trials": 5, "concurrency": 2, "cpus_per_trial": 1, "max_failures": 0},
        "search": {"granularity": "stage", "cost": "bootstraps", "preset": "mpcnn", "compile": False, "seed": 0,
                   "early_stopping": False},
        "storage": str(folder / "runs"), "tracking": {"uri": mlflow_server, "experiment": "per-layer-test"}})
    return search, run_search(search)


def test_trials_sample_one_alpha_per_stage_after_the_uniform_points(outcome):
    search, _ = outcome
    study = optuna.load_study(study_name="stages", storage=f"sqlite:///{search.run_dir / 'optuna.db'}")
    trials = [t for t in study.trials if DUPLICATE not in t.user_attrs]  # the sampler's repeats are not run
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert set(trials[0].params) == {f"alpha.{s}" for s in STAGES}
    uniform = [sorted(set(t.params.values())) for t in trials[:3]]
    assert uniform == [[8], [7], [5.625]]  # the study starts from the uniform answers it has to beat
    assert {a for t in study.trials for a in t.params.values()} <= {8, 7, 5.625}


def test_mlflow_records_group_alphas_costs_and_a_spec_that_rebuilds_them(outcome):
    search, result = outcome
    client = MlflowClient(search.tracking_uri)
    parent, children = child_runs(client, "stages")
    assert len(children) == 5 and {c.info.status for c in children} == {"FINISHED"}
    preset = load_preset("mpcnn")
    observed = prepare(build_model("resnet20"))
    for run in children:
        alphas = {s: float(run.data.params[f"alpha.{s}"]) for s in STAGES}
        spec_file = client.download_artifacts(run.info.run_id, "spec.json")
        spec = pann_spec.load(spec_file)
        stage_of = {"net_relu": "stem"}
        for layer in spec.layers:
            stage = stage_of.get(layer.name, layer.name.split("_")[1])
            assert layer.approximation.precision >= alphas[stage]  # each layer at its stage's alpha
        cost = network_cost(observed, preset, approximations=spec.approximations)
        assert run.data.metrics["bootstraps"] == cost.bootstraps
        assert run.data.metrics["polynomial_levels"] == cost.polynomial_levels
        assert run.data.metrics["precision_bits"] == pytest.approx(
            sum(alphas[stage_of.get(n, n.split("_")[1])] for n in spec.approximations) / 19)
    assert parent.info.status == "FINISHED"
    answer = json.loads(open(client.download_artifacts(parent.info.run_id, "answer.json")).read())
    assert answer["confirmation_accuracy"] >= search.target_accuracy
    assert answer["costs"]["bootstraps"] == result.answer.costs["bootstraps"]


def test_the_answer_is_the_cheapest_confirmed_front_point(outcome):
    search, result = outcome
    assert result.answer is not None and result.checked[-1][0] is result.answer
    assert result.answer.costs["bootstraps"] == min(p.costs["bootstraps"] for p in result.front)
    assert all(p.accuracy >= search.target_accuracy for p in result.front)
    assert result.confirmation_accuracy == result.checked[-1][1]
    assert 0 <= result.test_accuracy <= 1


def test_the_answer_is_a_registered_mlflow_model_that_reproduces_its_test_accuracy(outcome):
    import mlflow.pyfunc

    from pann.evaluate import accuracy
    from search.trial import splits_for

    search, result = outcome
    client = MlflowClient(search.tracking_uri)
    version = client.get_latest_versions("stages")[0]
    assert version.tags["test_accuracy"] == str(result.test_accuracy)
    assert float(version.tags["bootstraps"]) == result.answer.costs["bootstraps"]
    mlflow.set_tracking_uri(search.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/stages/{version.version}")
    model = loaded.get_raw_model()
    assert accuracy(model, splits_for(search).test) == result.test_accuracy
    images = next(splits_for(search).test.batches(8))[0]
    assert (loaded.predict(images.numpy()).argmax(1) == model(images).argmax(1).numpy()).all()
    # Nothing in the model folder is a pickle: it loads its tensors with weights_only=True.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/stages/{version.version}"))
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle")]


def test_export_writes_what_running_the_answer_elsewhere_needs(outcome, tmp_path):
    import subprocess
    import sys

    search, result = outcome
    out = tmp_path / "answer"
    done = subprocess.run([sys.executable, "-m", "search.cli", "export", "--run-id", result.parent_run_id,
                           "--out", str(out), "--tracking-uri", search.tracking_uri], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {"answer.json", "answer_spec.json", "backbone.pt", "mlflow_model"} <= {p.name for p in out.iterdir()}
    spec = pann_spec.load(out / "answer_spec.json")
    assert len(spec.layers) == 19
    # The answer's re-estimated batch-norm statistics travel in its spec: the exported weights and spec alone
    # rebuild the PANN that scored the test accuracy.
    assert spec.meta["correction"] == "batchnorm" and len(spec.batchnorm) == 19
    from pann.evaluate import accuracy
    from search.trial import splits_for

    rebuilt = pann_spec.apply(prepare(build_model("resnet20", 10, out / "backbone.pt")), spec, compiled=False)
    assert accuracy(rebuilt, splits_for(search).test) == result.test_accuracy
    bad = subprocess.run([sys.executable, "-m", "search.cli", "export", "--run-id", "nosuchrun", "--out",
                          str(tmp_path / "x"), "--tracking-uri", search.tracking_uri], capture_output=True, text=True)
    assert bad.returncode == 2 and "has no answer" in bad.stderr and "Traceback" not in bad.stderr


def test_best_first_walk_runs_in_ray_tune_as_in_the_one_at_a_time_drive(tmp_path):
    """The best-first searcher in a real Tuner with two trials at a time: it waits (``suggest`` returns None)
    for the results its next point depends on, ends the experiment itself, and walks as one trial at a time."""
    import ray
    from ray import tune

    from search.space import alpha_key
    from search.strategies.base import WalkSearcher
    from search.strategies.best_first import BestFirstWalk
    from tests.helpers import LADDER, drive, uneven

    keys = {g: alpha_key(g) for g in "abcd"}

    def trainable(config):
        tune.report({"final": 1, "accuracy": 0.95 - uneven(config), "loss": uneven(config)})

    one_at_a_time = BestFirstWalk(list("abcd"), LADDER, keys, 0.897)
    drive(one_at_a_time, score=lambda p: 0.95 - uneven(p), loss=uneven)
    two_at_a_time = BestFirstWalk(list("abcd"), LADDER, keys, 0.897, concurrency=2)
    asked = drive(two_at_a_time, 2, score=lambda p: 0.95 - uneven(p), loss=uneven)
    searcher = WalkSearcher(BestFirstWalk(list("abcd"), LADDER, keys, 0.897, concurrency=2))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        results = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=200,
                                                                    max_concurrent_trials=2, reuse_actors=True),
                             run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), verbose=0)).fit()
    finally:
        ray.shutdown()
    assert not results.errors
    assert searcher.walk.current == one_at_a_time.current == {"a": 7, "b": 5, "c": 4, "d": 4}
    # The points Tune ran are the ones the two-at-a-time drive proposes, whatever order the trials finished in.
    ran = sorted(repr({k: r.config[k] for k in keys.values()}) for r in results)
    assert ran == sorted(repr(point) for point in asked)
