"""Backbones: CIFAR ResNets (option-A shortcuts), CIFAR VGG-BN, and torchvision classifiers.

Every builder returns a :class:`Classifier`: the network together with its input
normalisation, so that it takes images in ``[0, 1]`` and weights never travel without
the preprocessing they were trained with. Weight files are either plain state dicts
of the network (as in ``../shared/data``) or checkpoints written by :func:`save_weights`,
which also record the model name and normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pann.files import atomic_write
from pann.models.weights import IMAGENET_MEAN, IMAGENET_STD, resolve
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Classifier(nn.Module):
    """``net((x - mean) / std)`` for images ``x`` in ``[0, 1]``, ``(N, 3, H, W)``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], name: str = ""):
        super().__init__()
        self.net = net
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


# --- CIFAR ResNet (He et al. 2016), keys as in akamaster/pytorch_resnet_cifar10 -------------

class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(in_planes, planes, stride)]
        layers += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- VGG with batch norm for 32x32 inputs ----------------------------------------------------

_VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# --- builders --------------------------------------------------------------------------------

def _builder(name: str, make_net: Callable[[int], nn.Module], mean: Sequence[float], std: Sequence[float],
             doc: str) -> Callable[..., Classifier]:
    def build(num_classes: int = 10, weights: str | Path | None = None) -> Classifier:
        model = Classifier(make_net(num_classes), mean, std, name)
        return load_weights(model, weights) if weights else model
    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


# The shared pretrained CIFAR ResNets were trained with ImageNet statistics.
resnet20, resnet32, resnet44, resnet56, resnet110 = (
    _builder(f"resnet{d}", functools.partial(CifarResNet, d), IMAGENET_MEAN, IMAGENET_STD,
             f"CIFAR ResNet-{d} (option-A shortcuts), ImageNet input normalisation.")
    for d in (20, 32, 44, 56, 110))
vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (
    _builder(f"vgg{d}_bn", functools.partial(CifarVGG, d), CIFAR10_MEAN, CIFAR10_STD,
             f"VGG-{d} with batch norm for 32x32 inputs, CIFAR-10 input normalisation.")
    for d in (11, 13, 16, 19))

CIFAR_MODELS: dict[str, Callable[..., Classifier]] = {
    f.__name__: f for f in (resnet20, resnet32, resnet44, resnet56, resnet110,
                            vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn)}


def model_names() -> list[str]:
    """CIFAR models, then every torchvision classification model."""
    return list(CIFAR_MODELS) + sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, num_classes: int = 10, weights: str | Path | None = None) -> Classifier:
    """A CIFAR model by name, or any torchvision classification model (ImageNet normalisation).

    ``weights``: a file or a weights name such as ``resnet20_cifar10`` (see :func:`load_weights`).
    """
    if name in CIFAR_MODELS:
        return CIFAR_MODELS[name](num_classes=num_classes, weights=weights)
    if name in torchvision.models.list_models(module=torchvision.models):
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        model = Classifier(net, IMAGENET_MEAN, IMAGENET_STD, name)
        return load_weights(model, weights) if weights else model
    raise ValueError(f"unknown model {name!r}; CIFAR models: {', '.join(CIFAR_MODELS)}, "
                     "or any torchvision classification model name")


def load_weights(model: Classifier, path: str | Path) -> Classifier:
    """Load a state dict, a :func:`save_weights` checkpoint or named weights into ``model`` strictly.

    ``path`` is a file, or a name of :data:`pann.models.weights.WEIGHTS` (``resnet20_cifar10``, whose input
    normalisation is the builder's), fetched with :func:`pann.models.weights.fetch`'s defaults (the torch hub
    cache, else the source); for a data folder or a mirror, pass the file that
    :func:`pann.models.weights.resolve` returns. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the mismatch when the weights
    do not fit the model.
    """
    path = resolve(path, model=model.name or None)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(data, dict) and "state_dict" in data:
        state = data["state_dict"]
        if "mean" in data and "std" in data:
            model.mean.copy_(torch.tensor(data["mean"]).view_as(model.mean))
            model.std.copy_(torch.tensor(data["std"]).view_as(model.std))
    else:
        state = data
    if not isinstance(state, dict):
        raise ValueError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                problems.append(f"{label}: {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
        raise ValueError(f"weights {path} do not fit {model.name or type(model.net).__name__}; "
                         + "; ".join(problems))
    model.net.load_state_dict(state, strict=True)
    return model


def save_weights(model: Classifier, path: str | Path, **metadata) -> None:
    """Write the network's state dict with its model name and normalisation, atomically (parents created)."""
    with atomic_write(path) as temporary:
        torch.save({"model": model.name, "state_dict": model.net.state_dict(), **model.normalization,
                    **metadata}, temporary)
