"""Batch norm re-estimated under the PANN on the augmented images that stay inside every layer's [-B, B] only.

    python experiments/bn_in_range_check.py [--model resnet56] [--alphas 8] [--data-dir ../shared/data]
        [--json docs/measurements/bn_in_range_resnet56.json]

The same split and images as `recipe_table.py` (per-layer B on 10,000 training images, margin 1; batch norm
re-estimated on 2,000 augmented training images; validation = first 2,000 test images, held out = the other 8,000).
Outside [-B, B] the polynomial diverges: one augmented image with an out-of-range input can put an activation of
1e10 B into a norm's variance and flatten that channel for every image. Here the PANN first runs on the augmented
images as converted, the images with any input outside its layer's [-B, B] are dropped, and the statistics are
re-estimated on the others. Prints and writes the accuracy on both slices, and the backbone's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.conversion.corrections import reestimate_batchnorm
from pann.data import calibration_images, load_dataset
from pann.evaluate import accuracies, calibrated
from pann.files import write_bytes_atomic
from pann.models.builders import build_model
from pann.user_input import parse_alphas

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--alphas", default="8")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/bn_in_range_resnet56.json"))
    args = parser.parse_args()
    test = load_dataset("cifar10", "test", args.data_dir)
    train = load_dataset("cifar10", "train", args.data_dir)
    parts = {"validation": test.subset(slice(0, 2000)), "held_out": test.subset(slice(2000, None))}
    augmented = torch.cat([x for x, _ in calibration_images(train, 2000).batches(
        500, augment=True, generator=torch.Generator().manual_seed(0))])
    backbone = build_model(args.model, 10, weights=args.data_dir / f"{args.model}_cifar10.pt")
    reference = {part: accuracies([backbone], data)[0] for part, data in parts.items()}
    print(f"{args.model} backbone: validation {100 * reference['validation']:.2f}%, "
          f"held out {100 * reference['held_out']:.2f}%", flush=True)
    observed = calibrated(backbone, calibration_images(train, 10000))
    out = {"model": args.model, "backbone": reference, "rows": []}
    for alpha in parse_alphas(args.alphas):
        pann = convert(observed, relu_for_precision(alpha), "layer")
        kept = reestimate_batchnorm(pann, [augmented], in_range=True)
        row = {"alpha": alpha, "augmented_images_kept": kept, "augmented_images": len(augmented)}
        for part, data in parts.items():
            row[part] = accuracies([pann], data)[0]
        out["rows"].append(row)
        write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())
        print(f"{args.model} alpha {alpha:g}: re-estimated on {row['augmented_images_kept']} of {len(augmented)} "
              f"augmented images: validation {100 * row['validation']:.2f}%, held out {100 * row['held_out']:.2f}%",
              flush=True)


if __name__ == "__main__":
    main()
