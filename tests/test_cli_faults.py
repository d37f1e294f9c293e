"""Bad input to the reading commands (``pareto``, ``ui``, ``evaluate``): one line naming what is wrong, exit 2,
nothing created (issue 10, case 10). Run in process: these fail before any real work."""

import pytest
import torch

from search.cli import main
from tracking.recorder import SearchRecorder


def fails(capsys, *argv) -> str:
    """Run ``pann ARGV``; assert it fails with exit 2 and no traceback, and return its last line on stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse refuses the value itself
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


def recorded(uri: str, experiment: str, name: str) -> str:
    recorder = SearchRecorder(uri, experiment)
    parent = recorder.start_search(name, {"target_accuracy": 0.5})
    recorder.finish_search()
    return parent


def test_a_mistyped_store_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "typo" / "mlflow.db"
    for argv in (["pareto", "--search", "s", "--out", str(tmp_path / "f.csv")], ["ui"]):
        line = fails(capsys, *argv, "--tracking-uri", f"sqlite:///{typo}")
        assert f"no MLflow store at {typo}" in line
    assert list(tmp_path.iterdir()) == []
    assert "not an MLflow tracking URI" in fails(capsys, "ui", "--tracking-uri", "other.db")


def test_ui_refuses_a_bad_port_a_busy_port_and_a_dead_server(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    recorded(f"sqlite:///{tmp_path / 'mlflow.db'}", "pann-search", "s")
    assert "--port: must be a port number in 1..65535, got 99999" in fails(capsys, "ui", "--port", "99999")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in fails(capsys, "ui", "--port", str(port))
    line = fails(capsys, "ui", "--tracking-uri", "http://127.0.0.1:1")
    assert "MLflow tracking server http://127.0.0.1:1 is not reachable" in line


def test_pareto_names_an_unknown_run_and_a_search_in_two_experiments(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = recorded(uri, "one", "same"), recorded(uri, "two", "same")
    out = tmp_path / "f.csv"
    assert "no run 'NOSUCH'" in fails(capsys, "pareto", "--run-id", "NOSUCH", "--out", str(out),
                                      "--tracking-uri", uri)
    line = fails(capsys, "pareto", "--search", "same", "--out", str(out), "--tracking-uri", uri)
    assert "search 'same' is recorded 2 times" in line and first in line and second in line
    assert "--run-id" in line and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_on_cuda_without_cuda_says_so_before_any_work(capsys):
    line = fails(capsys, "evaluate", "--model", "resnet20", "--dataset", "synthetic", "--device", "cuda")
    assert line == "pann evaluate: error: --device cuda: CUDA is not available on this machine"
    assert "is not a device" in fails(capsys, "evaluate", "--model", "resnet20", "--device", "tpu")


TINY_TRAINING = "model: resnet20\ndataset: synthetic\nepochs: 1\nbatch_size: 64\ntrain_limit: 64\nvalidation_size: 64\n"


def test_a_training_checkpoint_resumes_only_the_config_that_wrote_it(tmp_path, capsys):
    config, other = tmp_path / "train.yaml", tmp_path / "other.yaml"
    config.write_text(TINY_TRAINING)
    other.write_text(TINY_TRAINING + "lr: 0.05\n")
    checkpoint = tmp_path / "run.pt"
    assert main(["train", str(config), "--out", str(tmp_path / "a.pt"), "--checkpoint", str(checkpoint)]) == 0
    assert torch.load(checkpoint, weights_only=True)["config"]["lr"] == 0.01
    capsys.readouterr()
    line = fails(capsys, "train", str(other), "--out", str(tmp_path / "b.pt"), "--checkpoint", str(checkpoint))
    assert f"checkpoint {checkpoint} was written by another training config (lr: 0.01 in the checkpoint, " \
           f"0.05 now)" in line and str(other) in line
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    line = fails(capsys, "train", str(config), "--out", str(tmp_path / "b.pt"), "--checkpoint", str(corrupt))
    assert f"checkpoint {corrupt} cannot be read" in line
    state = torch.load(checkpoint, weights_only=True)
    foreign = tmp_path / "foreign.pt"
    torch.save({**state, "config": {**state["config"], "model": "resnet32"}}, foreign)
    line = fails(capsys, "train", str(config), "--out", str(tmp_path / "b.pt"), "--checkpoint", str(foreign))
    assert "model: 'resnet32' in the checkpoint, 'resnet20' now" in line
    assert not (tmp_path / "b.pt").exists()


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(TINY_TRAINING)
    (tmp_path / "file").write_text("")
    code = main(["train", str(config), "--out", str(tmp_path / "file" / "w.pt")])
    captured = capsys.readouterr()
    assert code == 2 and "epoch" not in captured.out
    assert captured.err.strip() == \
        f"pann train: error: --out {tmp_path / 'file' / 'w.pt'}: {tmp_path / 'file'} is a file, not a folder"
