import os
from pathlib import Path

import pytest
import torch

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
    from pann import catalog

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


# The longest xdist groups go first, so that the other worker takes the rest of the suite beside them (xdist hands
# out work in collection order; a worker whose group still has more than two tests to run takes no more).
_FIRST_GROUPS = ("ray-signals", "search-cluster", "search-per-layer")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        marker = item.get_closest_marker("xdist_group")
        group = marker.args[0] if marker else None
        return _FIRST_GROUPS.index(group) if group in _FIRST_GROUPS else len(_FIRST_GROUPS)

    items.sort(key=rank)  # stable: the order within each rank is pytest's own
