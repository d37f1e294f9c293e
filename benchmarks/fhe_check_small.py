"""A small CIFAR-10 PANN (CNN or MLP) checked under CKKS encryption (Orion), image by image.

    python benchmarks/fhe_check_small.py [--net cnn] [--relus 1] [--alpha 8] [--images 3]
                                         [--params leveled-128] [--out docs/measurements/fhe_small_cnn.json]

Needs ../shared/data and ``pip install 'pann[fhe]'``. Trains the CNN briefly on the first
10,000 training images (seed 0; the check is about agreement, not accuracy), converts it to a PANN
at --alpha with per-layer B (margin 1.2, calibrated on 2,000 training images), reports its plaintext
test accuracy on 1,000 test images, then encrypts the first --images test images and compares each
with the plaintext PANN. --relus 1: conv-bn-ReLU-conv-bn-pool-linear (13 levels at alpha 8, fits the
leveled preset); --relus 2 adds a ReLU after the second conv (22 levels, needs bootstrapping).
--net mlp: flatten-linear(3072, 16)-ReLU-linear(16, 10) (11 levels: one bootstrap at 10 levels).
Starts itself again with GOGC=20 where it is unset (Go's runtime reads only the environment the process
started with; docs/fhe.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from pann.fhe import backend as fhe
from pann.fhe.cli import restart_with_environment
from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.data import load_dataset
from pann.evaluate import accuracy, calibrated
from pann.models.builders import CIFAR10_MEAN, CIFAR10_STD, Classifier

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def small_net(net: str, relus: int) -> Classifier:
    if net == "mlp":
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3072, 16), nn.ReLU(), nn.Linear(16, 10)),
                          CIFAR10_MEAN, CIFAR10_STD, "small_mlp")
    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
              nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)]
    layers += [nn.ReLU()] * (relus - 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return Classifier(nn.Sequential(*layers), CIFAR10_MEAN, CIFAR10_STD, f"small_cnn_{relus}relu")


def train(model: nn.Module, data, epochs: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for x, y in data.batches(128, shuffle=True, augment=True, generator=generator):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--relus", type=int, choices=(1, 2), default=1, help="ReLUs of the CNN")
    parser.add_argument("--alpha", type=float, default=8)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--params", default="leveled-128")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    restart_with_environment({"GOGC": "20"})  # Go reads the environment the process starts with
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    train_set = load_dataset("cifar10", "train", SHARED)
    test_set = load_dataset("cifar10", "test", SHARED)
    model = small_net(args.net, args.relus)
    start = time.perf_counter()
    train(model, train_set.subset(slice(0, 10000)), args.epochs)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    calibration = train_set.subset(slice(10000, 12000))
    approximation = relu_for_precision(args.alpha)
    pann = convert(calibrated(model, calibration), approximation, "layer", 1.2, compiled=False)
    sample = test_set.subset(slice(0, 1000))
    backbone, pann_accuracy = accuracy(model, sample), accuracy(pann, sample)
    print(f"{model.name}: backbone {100 * backbone:.1f}%, PANN alpha {args.alpha:g} {approximation.name} "
          f"{100 * pann_accuracy:.1f}% on 1000 test images")
    images = next(test_set.subset(slice(0, args.images)).batches(args.images))[0]
    fit_images = next(calibration.batches(64))[0]
    report = fhe.check(pann, images, args.params, calibration=fit_images)
    results = report.results
    for r in results:
        print(r.to_dict())
    agree = sum(r.agrees for r in results)
    print(f"{agree}/{len(results)} agree; max logit error {max(r.max_logit_error for r in results):.3g}; "
          f"{sum(r.seconds for r in results) / len(results):.1f} s per image")
    if args.out:
        args.out.write_text(json.dumps({
            "model": model.name, "alpha": args.alpha, "degrees": list(approximation.degrees),
            "params": args.params, "backbone_accuracy": backbone, "pann_accuracy": pann_accuracy,
            **report.to_dict()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
