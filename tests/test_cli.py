import json
import subprocess
import sys

import pytest
import torch

from pann.models.builders import save_weights, vgg11_bn


def run(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "pann.cli", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_approx_json_table():
    rows = json.loads(run("approx", "--alphas", "5-7", "--json").stdout)
    assert [r["alpha"] for r in rows] == [5, 6, 7]
    assert all(r["precision"] >= r["alpha"] for r in rows)
    assert rows[0]["stages"][0]["coefficients"]


def test_approx_text_for_one_degree_set():
    out = run("approx", "--degrees", "15,15").stdout
    assert "15,15" in out and "9.01" in out


def test_evaluate_end_to_end_on_synthetic_data(tmp_path):
    result = run("evaluate", "--model", "resnet20", "--dataset", "synthetic", "--alphas", "6,12",
                 "--calibration-size", "200", "--limit", "100", "--json")
    report = json.loads(result.stdout)
    assert report["test_images"] == 100 and report["calibration_images"] == 200
    assert [p["alpha"] for p in report["curve"]] == [6, 12]
    assert len(report["bounds"]) == 19
    for point in report["curve"]:
        assert 0 <= point["accuracy"] <= 1 and 0 <= point["out_of_range"] <= 1


def test_evaluate_text_report(tmp_path):
    out = run("evaluate", "--model", "vgg11_bn", "--dataset", "synthetic", "--alphas", "10",
              "--calibration-size", "100", "--limit", "50", "--interval", "global").stdout
    assert "backbone accuracy" in out and "interval global" in out and "out-of-range" in out


@pytest.fixture
def vgg_weights(tmp_path):
    path = tmp_path / "vgg.pt"
    save_weights(vgg11_bn(), path)
    return path


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--model", "resnet21", "--dataset", "synthetic"], "unknown model 'resnet21'"),
    (["evaluate", "--model", "resnet20", "--weights", "VGG"], "do not fit resnet20"),
    (["evaluate", "--model", "resnet20", "--data-dir", "/nonexistent/pann-data"], "does not exist"),
    (["evaluate", "--model", "resnet20", "--dataset", "synthetic", "--alphas", "20"], "supported range"),
    (["approx", "--alphas", "1-30"], "supported range"),
    (["approx", "--alphas", "nine"], "cannot read alphas"),
    (["approx", "--degrees", "15,16"], "degree 16 is even"),
    (["approx", "--degrees", "15,99"], "outside 1..31"),
])
def test_bad_input_is_one_line_error(args, message, vgg_weights):
    args = [str(vgg_weights) if a == "VGG" else a for a in args]
    result = run(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_negative_margin_is_rejected_by_the_parser():
    result = run("evaluate", "--model", "resnet20", "--margin", "-1", check=False)
    assert result.returncode == 2 and "must be positive" in result.stderr


@pytest.mark.slow
def test_train_from_yaml_writes_loadable_weights(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("model: resnet20\ndataset: synthetic\nepochs: 1\nbatch_size: 64\ntrain_limit: 128\n"
                      "validation_size: 64\nleakage: random-slope\nslope: 0.02\n")
    out = tmp_path / "w.pt"
    result = run("train", str(config), "--out", str(out))
    assert "epoch 1/1" in result.stdout and out.is_file()
    saved = torch.load(out, weights_only=True)
    assert saved["config"]["leakage"] == "random-slope" and len(saved["history"]) == 1
    report = json.loads(run("evaluate", "--model", "resnet20", "--weights", str(out), "--dataset", "synthetic",
                            "--alphas", "9", "--calibration-size", "64", "--limit", "64", "--json").stdout)
    assert len(report["curve"]) == 1
    again = run("train", str(config), "--out", str(out), check=False)
    assert again.returncode == 2 and "exists" in again.stderr


def test_train_rejects_bad_config_before_training(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: resnet20\nleakage: dropout\nweight_decay: -0.1\nmixup_alpha: 0\n")
    result = run("train", str(config), "--out", str(tmp_path / "w.pt"), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    for field in ("leakage", "weight_decay", "mixup_alpha"):
        assert field in result.stderr
    assert not (tmp_path / "w.pt").exists()
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "mapping" in run("train", str(tmp_path / "list.yaml"), "--out", str(tmp_path / "w.pt"), check=False).stderr


def test_resumed_training_is_logged_on_stderr(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("model: resnet20\ndataset: synthetic\nepochs: 1\nbatch_size: 64\ntrain_limit: 64\n"
                      "validation_size: 64\n")
    checkpoint = tmp_path / "run.pt"
    first = run("train", str(config), "--out", str(tmp_path / "a.pt"), "--checkpoint", str(checkpoint))
    assert "epoch 1/1" in first.stdout and "resuming" not in first.stderr
    again = run("train", str(config), "--out", str(tmp_path / "b.pt"), "--checkpoint", str(checkpoint))
    assert f"INFO pann.training.trainer: resuming from {checkpoint} after epoch 1" in again.stderr
    assert "epoch 1/1" not in again.stdout  # the finished epoch is not trained again
    assert torch.load(tmp_path / "b.pt", weights_only=True)["history"] == torch.load(
        tmp_path / "a.pt", weights_only=True)["history"]


def test_progress_line_in_a_log_prints_at_most_every_interval_and_always_the_final_lines():
    import io

    from pann.console import progress_line

    stream = io.StringIO()  # not a terminal
    show = progress_line(every_s=3600, stream=stream)
    show("compiling 1/5")
    show("compiling 2/5")  # within the hour: left out
    show("image 1/2: layer 71/71", final=True)
    show(None)
    assert stream.getvalue() == "compiling 1/5\nimage 1/2: layer 71/71\n"
