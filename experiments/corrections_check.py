"""Post-training corrections on the shared ResNet-20: batch-norm re-estimation and leakage compensation.

    python experiments/corrections_check.py [--alphas 6,7] [--limit 2000] [--data-dir ../shared/data]

Per-layer B calibrated on 10,000 training images; corrections measured on 2,000 of them (batch norm re-estimated
on them with the training augmentation, crop+flip, seed 0; the backbone also without it, for comparison); accuracy
on the first --limit test images for the backbone and for the PANN at each alpha, without and with each correction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.conversion.corrections import compensate_leakage, reestimate_batchnorm
from pann.data import calibration_images, load_dataset
from pann.evaluate import accuracy, calibrated
from pann.models.builders import resnet20
from pann.user_input import parse_alphas

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="6,7")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    args = parser.parse_args()
    model = resnet20(weights=args.data_dir / "resnet20_cifar10.pt").eval()
    test = load_dataset("cifar10", "test", args.data_dir).subset(slice(0, args.limit))
    train = load_dataset("cifar10", "train", args.data_dir)
    observed = calibrated(model, calibration_images(train, 10000))
    batches = [x for x, _ in calibration_images(train, 2000).batches(500)]
    augmented = [x for x, _ in calibration_images(train, 2000).batches(
        500, augment=True, generator=torch.Generator().manual_seed(0))]

    print(f"{len(test)} test images")
    print(f"backbone: {100 * accuracy(model, test):.2f}%")
    for label, images in (("clean", batches), ("augmented", augmented)):
        reestimated = calibrated(model, calibration_images(train, 1))  # a copy of the backbone with observers
        reestimate_batchnorm(reestimated, images)
        print(f"backbone, batch norm re-estimated on {label} images: {100 * accuracy(reestimated, test):.2f}%",
              flush=True)
    for alpha in parse_alphas(args.alphas):
        approx = relu_for_precision(alpha)
        results = {}
        for label, steps in (("as converted", ()), ("leakage compensation", ("leak",)),
                             ("batch norm re-estimated", ("bn",)), ("both", ("bn", "leak"))):
            pann = convert(observed, approx)
            if "bn" in steps:
                reestimate_batchnorm(pann, augmented)
            if "leak" in steps:
                compensate_leakage(pann, batches)
            results[label] = accuracy(pann, test)
        print(f"alpha {alpha:g}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in results.items()), flush=True)


if __name__ == "__main__":
    main()
