import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def approximation_cache(tmp_path_factory):
    """A fresh on-disk approximation cache per test session, so tests solve from scratch."""
    from pann import catalog

    path = tmp_path_factory.mktemp("pann-cache")
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
