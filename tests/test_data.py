import pytest
import torch

from pann.data import ImageSet, calibration_images, load_dataset, split_train, synthetic


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


def test_batches_are_floats_in_unit_range():
    data = synthetic(50)
    x, y = next(data.batches(20))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, data.images[:20].permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(y, data.labels[:20])


def crop_and_flip_of(augmented: torch.Tensor, original: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (dy, dx, flipped) that turn ``original`` into ``augmented``: a 32x32 window of the image
    zero-padded by 4 pixels, possibly mirrored; None when no window matches."""
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy:dy + 32, dx:dx + 32]
            for flipped in (False, True):
                if torch.equal(augmented, window.flip(-1) if flipped else window):
                    return dy, dx, flipped
    return None


def test_augmentation_is_a_random_padded_crop_and_flip_of_each_image():
    data = synthetic(64)
    plain, labels = next(data.batches(64))
    augmented, augmented_labels = next(data.batches(64, augment=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(augmented_labels, labels)  # same order: the only change is the augmentation
    found = [crop_and_flip_of(a, p) for a, p in zip(augmented, plain)]
    assert None not in found, "an augmented image is not a crop (and flip) of its original"
    offsets = {(dy, dx) for dy, dx, _ in found}
    flips = [flipped for _, _, flipped in found]
    assert len(offsets) > 20 and any(flips) and not all(flips)  # random crops, about half flipped
    again, _ = next(data.batches(64, augment=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(again, augmented)  # the generator alone decides


def indexed(size: int) -> ImageSet:
    """A set whose labels are the positions of its images, so a subset tells which images it holds."""
    return ImageSet(torch.zeros(size, 32, 32, 3, dtype=torch.uint8), torch.arange(size))


def test_synthetic_is_deterministic():
    a, b = synthetic(100, seed=3), synthetic(100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, synthetic(100, seed=4).images)


def test_split_is_a_disjoint_seeded_partition():
    train, val = split_train(indexed(100), 20, seed=1)
    train_ids, val_ids = set(train.labels.tolist()), set(val.labels.tolist())
    assert len(train) == 80 and len(val) == 20
    assert not train_ids & val_ids and train_ids | val_ids == set(range(100))
    again_train, again_val = split_train(indexed(100), 20, seed=1)
    assert torch.equal(again_train.labels, train.labels) and torch.equal(again_val.labels, val.labels)
    assert set(split_train(indexed(100), 20, seed=2)[1].labels.tolist()) != val_ids
    assert val.labels.tolist() != list(range(20))  # shuffled, not the first images
    for size in (0, 100):
        with pytest.raises(ValueError, match="validation size"):
            split_train(indexed(100), size)


def test_calibration_images_are_nested_seeded_and_shuffled():
    ten, two = calibration_images(indexed(100), 10), calibration_images(indexed(100), 2)
    assert ten.labels[:2].tolist() == two.labels.tolist()  # the first 2 are the first 2 of the first 10
    assert len(set(ten.labels.tolist())) == 10 and ten.labels.tolist() != list(range(10))
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:10]
    assert ten.labels.tolist() == expected.tolist()  # the permutation every measured number used
    assert calibration_images(indexed(100), 10, seed=1).labels.tolist() != ten.labels.tolist()
