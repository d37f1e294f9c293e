"""Image classification data held in memory as uint8 tensors, batched as floats in [0, 1].

One data root serves every dataset: ``--data-dir ROOT``, else ``$PANN_DATA_DIR``, else
``./data``. CIFAR-10 is read from ``ROOT/cifar10/{train_1..5,test}.npz`` when present
(the offline layout of ``../shared/data``), otherwise from torchvision's layout under
``ROOT``, downloaded when missing. CIFAR-100 uses torchvision's layout. ``synthetic``
is a small generated 10-class dataset for tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("cifar10", "cifar100", "synthetic")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10}


@dataclass(frozen=True)
class ImageSet:
    """``images`` uint8 ``(N, 32, 32, 3)`` and ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float ``(B, 3, 32, 32)`` batches in ``[0, 1]`` with labels; ``augment`` adds
        the standard CIFAR random crop (4-pixel zero padding) and horizontal flip."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start:start + batch_size]
            x = self.images[index].permute(0, 3, 1, 2).float().div_(255)
            if augment:
                x = _random_crop_flip(x, generator)
            yield x, self.labels[index]


def _random_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def default_data_dir() -> Path:
    return Path(os.environ.get("PANN_DATA_DIR") or "data")


def load_dataset(name: str, split: str, data_dir: str | Path | None = None) -> ImageSet:
    """The ``split`` (``'train'`` or ``'test'``) of dataset ``name`` from the data root."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if name == "synthetic":
        return synthetic(1000 if split == "train" else 500, seed=0 if split == "train" else 1)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist (set --data-dir or PANN_DATA_DIR)")
    if name == "cifar10" and (root / "cifar10").is_dir():
        return _cifar10_npz(root / "cifar10", split)
    return _torchvision_cifar(name, root, split)


def download(name: str, data_dir: str | Path | None = None) -> None:
    """Put dataset ``name`` under the data root if it is not there (torchvision's download, both splits).

    Nothing to do for ``synthetic`` or the npz layout. Call it once before parallel readers start:
    torchvision's download is not safe to run from several processes at once.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "synthetic" or name == "cifar10" and (root / "cifar10").is_dir():
        return
    for split in ("train", "test"):
        load_dataset(name, split, root)


def _cifar10_npz(folder: Path, split: str) -> ImageSet:
    files = [folder / "test.npz"] if split == "test" else [folder / f"train_{i}.npz" for i in range(1, 6)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 files missing: {', '.join(missing)}")
    images, labels = [], []
    for f in files:
        with np.load(f, allow_pickle=False) as data:
            images.append(data["x"])
            labels.append(data["y"])
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)).long())


def _torchvision_cifar(name: str, root: Path, split: str) -> ImageSet:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        dataset = cls(str(root), train=split == "train", download=True)
    except Exception as exc:  # no network, corrupt archive, ...
        raise FileNotFoundError(f"{name} not found under {root} and could not be downloaded: {exc}") from exc
    return ImageSet(torch.from_numpy(dataset.data), torch.tensor(dataset.targets, dtype=torch.long))


def synthetic(size: int, seed: int = 0, num_classes: int = 10) -> ImageSet:
    """A learnable 10-class dataset: each class a colour and stripe pattern, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (size,), generator=g)
    proto_g = torch.Generator().manual_seed(1234)  # the same class prototypes for every split
    colours = torch.rand(num_classes, 3, generator=proto_g)
    frequency = torch.arange(1, num_classes + 1, dtype=torch.float32)
    ramp = torch.linspace(0, 2 * torch.pi, 32)
    stripes = torch.sin(frequency[:, None] * ramp[None, :])[:, None, :, None]  # (C, 1, 32, 1)
    base = colours[:, None, None, :] * 0.6 + 0.2 * stripes  # (C, 32, 32|1, 3)
    images = base[labels].expand(size, 32, 32, 3) + 0.15 * torch.randn(size, 32, 32, 3, generator=g)
    return ImageSet((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def _shuffled(images: ImageSet, seed: int) -> torch.Tensor:
    return torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))


def calibration_images(train: ImageSet, size: int, seed: int = 0) -> ImageSet:
    """The first ``size`` images of a seeded permutation of ``train``: what the CLI and the experiments calibrate
    ranges and estimate corrections on. Nested: the first 2,000 are the first 2,000 of the first 10,000."""
    return train.subset(_shuffled(train, seed)[:size])


def split_train(train: ImageSet, validation_size: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Split a training set into (train, validation) by a seeded permutation (the validation images are
    :func:`calibration_images` of the same size and seed)."""
    if not 0 < validation_size < len(train):
        raise ValueError(f"validation size {validation_size} must be in 1..{len(train) - 1}")
    order = _shuffled(train, seed)
    return train.subset(order[validation_size:]), train.subset(order[:validation_size])
