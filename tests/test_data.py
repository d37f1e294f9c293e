import pytest
import torch

from pann.data import load_dataset, split_train, synthetic


def test_shared_cifar10_npz_layout(shared_data):
    test = load_dataset("cifar10", "test", shared_data)
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == torch.uint8
    assert test.images[0, 0, 0].tolist() == [158, 112, 49]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    train = load_dataset("cifar10", "train", shared_data)
    assert len(train) == 50000 and train.images[0, 0, 0].tolist() == [59, 62, 63]


def test_data_dir_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("PANN_DATA_DIR", str(shared_data))
    assert len(load_dataset("cifar10", "test")) == 10000


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", "test", tmp_path / "nowhere")
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(FileNotFoundError, match="test.npz"):
        load_dataset("cifar10", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", "test", tmp_path)


def test_batches_are_floats_in_unit_range_and_augmentation_keeps_shape():
    data = synthetic(50)
    x, y = next(data.batches(20))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, data.images[:20].permute(0, 3, 1, 2).float() / 255)
    g = torch.Generator().manual_seed(0)
    xa, ya = next(data.batches(20, shuffle=True, augment=True, generator=g))
    assert xa.shape == x.shape and not torch.equal(xa, x)
    # Augmentation only moves pixels: each crop is a window of the zero-padded image.
    assert xa.max() <= 1 and xa.min() >= 0


def test_synthetic_is_deterministic_and_split_is_disjoint():
    a, b = synthetic(100, seed=3), synthetic(100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    train, val = split_train(a, 20, seed=1)
    assert len(train) == 80 and len(val) == 20
    with pytest.raises(ValueError, match="validation size"):
        split_train(a, 100)
