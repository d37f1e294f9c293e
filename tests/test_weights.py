"""Named pretrained weights: download from a local server standing in for the source, hash check,
conversion, strict load, the data folder first, the errors, and the accuracy the weights reach."""

import contextlib
import functools
import hashlib
import json
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from pann.models import weights
from pann.cli import main
from pann.data import load_dataset
from pann.evaluate import accuracy
from pann.models.builders import build_model
from pann.models.weights import WEIGHTS, DownloadError
from search import config
from search.config import SearchConfigError


@contextlib.contextmanager
def serve(folder: Path):
    """``folder`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def original(shared_data) -> Path:
    folder = shared_data / "original"
    if not folder.is_dir():
        pytest.skip(f"original checkpoints not found at {folder}")
    return folder


@pytest.fixture
def source(original):
    with serve(original) as url:
        yield url


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache for this test (torch.hub.get_dir() follows $TORCH_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights.cache_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    return weights.cache_dir()


@pytest.fixture
def unreachable() -> str:
    """A URL on a local port nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_download_verifies_converts_and_loads_strictly(name, source, hub, shared_data):
    entry = WEIGHTS[name]
    path = weights.fetch(name, base_url=source)
    assert path == hub / f"{name}.pt"
    assert sha256(hub / entry.file) == entry.sha256
    converted = torch.load(path, weights_only=True)
    reference = torch.load(shared_data / f"{name}.pt", weights_only=True)  # converted independently
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)
    model = build_model(entry.model, entry.num_classes, weights=name)  # by name: from the cache now
    assert torch.equal(model.net.linear.weight, reference["linear.weight"])
    assert tuple(model.mean.flatten().tolist()) == pytest.approx(entry.mean)
    assert tuple(model.std.flatten().tolist()) == pytest.approx(entry.std)


def test_cached_copy_is_used_without_the_network(source, hub, unreachable):
    first = weights.fetch("resnet20_cifar10", base_url=source)
    assert weights.cached("resnet20_cifar10") == hub / "resnet20-12fca82f.th"
    assert weights.fetch("resnet20_cifar10", base_url=unreachable) == first


def test_corrupted_download_is_refused_and_not_cached(original, hub, tmp_path):
    bad = tmp_path / "mirror"
    bad.mkdir()
    data = bytearray((original / "resnet20-12fca82f.th").read_bytes())
    data[-100] ^= 0xFF
    (bad / "resnet20-12fca82f.th").write_bytes(bytes(data))
    with serve(bad) as url, pytest.raises(DownloadError, match="sha256") as err:
        weights.fetch("resnet20_cifar10", base_url=url)
    assert f"{url}resnet20-12fca82f.th" in str(err.value) and str(hub / "resnet20-12fca82f.th") in str(err.value)
    assert list(hub.iterdir()) == []
    assert weights.cached("resnet20_cifar10") is None


def test_corrupted_cached_copy_is_removed_and_downloaded_again(source, hub, unreachable):
    hub.mkdir(parents=True)
    cached = hub / "resnet20-12fca82f.th"
    cached.write_bytes(b"not the checkpoint")
    with pytest.raises(DownloadError, match=f"cannot download {unreachable}resnet20-12fca82f.th"):
        weights.fetch("resnet20_cifar10", base_url=unreachable)
    assert not cached.exists()
    cached.write_bytes(b"not the checkpoint")
    weights.fetch("resnet20_cifar10", base_url=source)
    assert sha256(cached) == WEIGHTS["resnet20_cifar10"].sha256


def test_unreachable_url_without_a_cached_copy_names_the_url(hub, unreachable):
    with pytest.raises(DownloadError, match=f"cannot download {unreachable}resnet32-d509ac18.th to {hub}"):
        weights.fetch("resnet32_cifar10", base_url=unreachable)
    assert not hub.exists() or list(hub.iterdir()) == []


def test_data_folder_is_used_first(shared_data, hub, unreachable):
    assert weights.fetch("resnet44_cifar10", shared_data, unreachable) == shared_data / "resnet44_cifar10.pt"
    assert weights.cached("resnet44_cifar10", shared_data) == shared_data / "resnet44_cifar10.pt"
    assert not hub.exists()


def test_unknown_name_lists_the_known_ones(hub):
    known = ", ".join(WEIGHTS)
    with pytest.raises(ValueError, match=f"unknown weights 'resnet18_cifar10'; known: {known}"):
        weights.get_weights("resnet18_cifar10")
    with pytest.raises(FileNotFoundError, match=f"resnet21_cifar10 \\(named weights: {known}\\)"):
        build_model("resnet20", weights="resnet21_cifar10")


def test_named_weights_fit_only_their_model(hub):
    with pytest.raises(ValueError, match="resnet20_cifar10 are for resnet20, not resnet32"):
        build_model("resnet32", weights="resnet20_cifar10")
    assert not hub.exists()  # refused before any download


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_normalisation_is_the_builders(name):
    entry = WEIGHTS[name]
    model = build_model(entry.model)
    assert model.normalization == {"mean": pytest.approx(list(entry.mean)), "std": pytest.approx(list(entry.std))}


def search_config(tmp_path, **backbone) -> dict:
    return {"name": "t", "target_accuracy": 0.5,
            "backbone": {"model": "resnet20", "dataset": "synthetic", "data_dir": str(tmp_path), **backbone},
            "space": {"alpha": {"low": 6, "high": 8}, "epochs": [0]}}


def test_search_config_fetches_named_weights_before_any_trial(tmp_path, source, hub, unreachable, monkeypatch):
    monkeypatch.setenv("PANN_WEIGHTS_URL", unreachable)  # the config's own URL wins over the variable
    search = config.from_dict(search_config(tmp_path, weights="resnet20_cifar10", weights_url=source))
    assert search.weights == str(hub / "resnet20_cifar10.pt")
    assert search.weights_url == source


def test_search_config_names_the_weights_problems(tmp_path, hub, unreachable, monkeypatch):
    monkeypatch.setenv("PANN_WEIGHTS_URL", unreachable)
    with pytest.raises(SearchConfigError) as err:
        config.from_dict(search_config(tmp_path, weights="resnet20_cifar10"))
    assert err.value.problems == [f"backbone.weights: cannot download {unreachable}resnet20-12fca82f.th to "
                                  f"{hub / 'resnet20-12fca82f.th'}: [Errno 111] Connection refused"]
    with pytest.raises(SearchConfigError) as err:
        config.from_dict(search_config(tmp_path, weights="resnet56_cifar10", weights_url=3))
    assert err.value.problems == ["backbone.weights_url: must be a URL (got 3)"]
    with pytest.raises(SearchConfigError) as err:
        config.from_dict(search_config(tmp_path, model="resnet32", weights="resnet20_cifar10"))
    assert err.value.problems == ["backbone.weights: weights resnet20_cifar10 are for resnet20, not resnet32"]


def test_cli_lists_names_accuracy_licence_and_cache(source, hub, tmp_path, capsys):
    weights.fetch("resnet32_cifar10", base_url=source)
    assert main(["weights", "--data-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["resnet32_cifar10"].split()[1:4] == ["resnet32", "92.78%", "yes"]
    assert rows["resnet20_cifar10"].split()[1:4] == ["resnet20", "91.78%", "no"]
    assert all("BSD-2-Clause, Copyright (c) 2018, Yerlan Idelbayev" in rows[name] for name in WEIGHTS)


@pytest.mark.slow
def test_downloaded_resnet20_scores_91_73_percent(source, hub, shared_data):
    model = build_model("resnet20", weights=weights.fetch("resnet20_cifar10", base_url=source))
    test = load_dataset("cifar10", "test", shared_data)
    assert round(accuracy(model, test, 500) * len(test)) == 9173


def test_fresh_machine_gets_the_default_data_folder(tmp_path, monkeypatch, shared_data):
    """Nothing beside the clone: ./data is created for torchvision's download; a folder given is checked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PANN_DATA_DIR", raising=False)
    data = search_config(tmp_path, dataset="cifar10", weights=str(shared_data / "resnet20_cifar10.pt"))
    del data["backbone"]["data_dir"]
    assert config.from_dict(data).data_dir == str(tmp_path / "data")
    assert (tmp_path / "data").is_dir()
    data["backbone"]["data_dir"] = "elsewhere"
    with pytest.raises(SearchConfigError, match="backbone.data_dir: .*elsewhere does not exist"):
        config.from_dict(data)


def test_cli_evaluate_takes_a_name_and_the_mirror_from_the_environment(source, hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PANN_WEIGHTS_URL", source)
    args = ["evaluate", "--model", "resnet20", "--weights", "resnet20_cifar10", "--dataset", "synthetic",
            "--data-dir", str(tmp_path), "--alphas", "8", "--calibration-size", "100", "--limit", "100", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "resnet20_cifar10"
    assert sha256(hub / "resnet20-12fca82f.th") == WEIGHTS["resnet20_cifar10"].sha256  # downloaded from the mirror
