"""``pann fhe-check --run-id``: a search's answer read from its MLflow parent run, checked, and the results
recorded under that run (real MLflow in a sqlite store; the encrypted run needs orion-fhe and skips without)."""

import argparse
import importlib.util
import json

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from pann.fhe import cli as fhe_cli
from pann.approximation.catalog import get_approximation
from pann.conversion.flow import calibrate, convert, prepare
from pann.models.builders import build_model
from pann.conversion.spec import spec_of
from search.cli import main
from tracking.checks import CHECK_TAG
from tracking.recorder import SearchRecorder

HAVE_ORION = importlib.util.find_spec("orion") is not None
TOLERANCE = 1e-5  # as tests/test_fhe.py: largest logit difference to the float64 PANN at scale 2^40


def _resnet_spec() -> dict:
    """The spec of an (untrained) ResNet-20 PANN with per-layer B, as a search's answer_spec.json holds it."""
    observed = prepare(build_model("resnet20"))
    calibrate(observed, [torch.rand(4, 3, 32, 32)])
    pann = convert(observed, get_approximation("composite", (3, 3)), margin=1.2, compiled=False)
    return spec_of(pann, model="resnet20", weights="").to_dict()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store with a finished search 'found' (an answer spec), a search 'none' without an
    answer, and a trial run of 'found'; their run ids by name. One per module (a new store costs seconds):
    only the last test records into it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ids = {}
    for name in ("found", "none"):
        recorder = SearchRecorder(uri, "pann-search")
        ids[name] = recorder.start_search(name, {"model": "resnet20", "dataset": "synthetic", "weights": ""})
        if name == "found":
            ids["trial"] = recorder.start_trial("t1", {"alpha": 3})
            recorder.finish_trial("t1", "FINISHED")
            recorder.log_dict(None, _resnet_spec(), "answer_spec.json")
        recorder.finish_search()
    return uri, ids


@pytest.mark.parametrize("which,message", [("missing", "no run '0123456789abcdef0123456789abcdef'"),
                                           ("trial", "is not the parent run of a search"),
                                           ("none", "has no answer (answer_spec.json)")])
def test_run_id_that_holds_no_answer_is_one_line_of_error(store, capsys, which, message):
    uri, ids = store
    code = main(["fhe-check", "--run-id", ids.get(which, "0123456789abcdef0123456789abcdef"),
                 "--tracking-uri", uri, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_spec_of_a_search_rebuilds_its_pann_with_every_bound(store, tmp_path):
    uri, ids = store
    spec = MlflowClient(uri).download_artifacts(ids["found"], "answer_spec.json", str(tmp_path))
    args = argparse.Namespace(model="resnet20", weights=None, dataset="synthetic", data_dir=None, spec=spec,
                              alpha=None, margin=1.2, calibration_size=8, images=2, fit_images=4)
    pann, images, fit_images = fhe_cli._fhe_pann(args)
    bounds = {name: float(m.bound) for name, m in pann.named_modules() if type(m).__name__ == "PolyReLU"}
    expected = {layer["name"]: layer["B"] for layer in json.loads(open(spec).read())["layers"]}
    assert len(bounds) == 19 and sorted(bounds.values()) == pytest.approx(sorted(expected.values()))
    assert images.shape == (2, 3, 32, 32) and fit_images.shape == (4, 3, 32, 32)


def _mlp_pann():
    data = torch.randn(32, 1, 4, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    observed = prepare(model)
    calibrate(observed, [data])
    return convert(observed, get_approximation("composite", (7, 7)), margin=1.2, compiled=False), data


@pytest.mark.skipif(not HAVE_ORION, reason="orion-fhe is not installed (pip install 'pann[fhe]')")
def test_run_id_checks_the_answer_encrypted_and_records_it_under_the_run(store, capsys, monkeypatch, tmp_path):
    # The answer's network is replaced by a small MLP (ResNet-20 is far too slow to encrypt in a test); the
    # spec, model and dataset the command reads from the run are what the replacement receives.
    uri, ids = store
    pann, data = _mlp_pann()
    seen = []

    def small_pann(args):
        seen.append((json.loads(open(args.spec).read()), args.model, args.dataset))
        return pann, data[:2], data

    monkeypatch.setattr(fhe_cli, "_fhe_pann", small_pann)
    monkeypatch.setattr(fhe_cli, "_predicted_bootstraps", lambda *_: 0)
    monkeypatch.setenv("GOGC", "20")
    code = main(["fhe-check", "--run-id", ids["found"], "--tracking-uri", uri, "--params", "insecure-test", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    spec = json.loads(open(MlflowClient(uri).download_artifacts(ids["found"], "answer_spec.json",
                                                                 str(tmp_path))).read())
    assert seen == [(spec, "resnet20", "synthetic")]
    report = json.loads(out)  # stdout holds the report alone; where it was recorded goes to stderr
    assert f"recorded under MLflow run {ids['found']}" in err
    results = report["results"]
    # Depth 9: the MLP's ReLU takes its input from a linear layer alone, which takes its 1/B (10 levels unfolded).
    assert [r["bootstraps"] for r in results] == [0, 0] and report["depth"] == 9 and not report["secure"]
    assert report["prescales_kept"] == 0
    assert all(r["agrees"] and r["max_logit_error"] < TOLERANCE for r in results)

    client = MlflowClient(uri)
    run = client.get_run(ids["found"])
    metrics = run.data.metrics
    assert metrics["fhe_check/insecure-test/agreement"] == 1.0 and metrics["fhe_check/insecure-test/images"] == 2
    assert report["batch"] == metrics["fhe_check/insecure-test/batch"] == 2  # --batch 4 by default: both together
    assert metrics["fhe_check/insecure-test/max_logit_error"] == max(r["max_logit_error"] for r in results)
    assert metrics["fhe_check/insecure-test/peak_memory_gib"] > 0
    # Each image's layers timed; this MLP never bootstraps, so no second of it went to bootstraps.
    assert {"linear", "relu"} <= {row["kind"] for row in results[0]["layers"]} and report["cost_model"] == "orion-resnet"
    assert metrics["fhe_check/insecure-test/bootstrap_seconds_per_image"] == 0
    assert metrics["fhe_check/insecure-test/estimated_seconds_100_images"] == pytest.approx(
        report["compile_seconds"] + 100 * sum(r["seconds"] for r in results) / 2)
    history = client.get_metric_history(ids["found"], "fhe_check/insecure-test/image_seconds")
    assert sorted((m.step, m.value) for m in history) == [(0, results[0]["seconds"]), (1, results[1]["seconds"])]
    assert run.data.tags[CHECK_TAG] == "2/2 images agree under insecure-test (INSECURE test parameters)"
    recorded = client.download_artifacts(ids["found"], "fhe_check/insecure-test.json", str(tmp_path))
    assert json.loads(open(recorded).read()) == report
