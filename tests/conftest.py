import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import BIN, free_port, listening, stop_group, wait_for
from tracking.stores import server_environment

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def pytest_configure(config):
    # With pytest-xdist (the default: two workers, see pyproject.toml) each worker uses one of the two cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def approximation_cache(tmp_path_factory):
    """A fresh on-disk approximation cache per test session, so tests solve from scratch; shared by the
    session's xdist workers (the catalog writes each file atomically, so a set two workers solve at once is
    written twice with the same content)."""
    from pann.approximation import catalog
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp("pann-cache")
    else:
        path = tmp_path_factory.getbasetemp().parent / "pann-cache"
        path.mkdir(exist_ok=True)
    old = os.environ.get("PANN_CACHE_DIR")
    os.environ["PANN_CACHE_DIR"] = str(path)
    catalog._cached.cache_clear()
    yield path
    catalog._cached.cache_clear()
    if old is None:
        os.environ.pop("PANN_CACHE_DIR", None)
    else:
        os.environ["PANN_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10" / "test.npz").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CIFAR-10 npz and pretrained ResNets)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server on 127.0.0.1 (or the one .ci/run started, given by PANN_TEST_MLFLOW_URI)."""
    if os.environ.get("PANN_TEST_MLFLOW_URI"):
        yield os.environ["PANN_TEST_MLFLOW_URI"]
        return
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=server_environment(os.environ))
    try:
        wait_for(lambda: listening(port), 300, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(server)



# The longest modules go first, so that the other worker runs the rest of the suite beside them (pyproject.toml:
# xdist hands out whole modules in collection order).
_FIRST_MODULES = ("test_search_faults.py", "test_search_cluster.py", "test_search_trained.py", "test_search_per_layer.py",
                  "test_per_layer.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return _FIRST_MODULES.index(name) if name in _FIRST_MODULES else len(_FIRST_MODULES)

    items.sort(key=rank)  # stable: the order within each rank is pytest's own
