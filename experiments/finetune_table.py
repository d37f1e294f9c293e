"""Main table: PANN accuracy vs alpha for the post-training baseline and for each mitigation technique.

    python experiments/finetune_table.py [--epochs 1] [--alphas 4-10] [--data-dir ../shared/data]
        [--json docs/measurements/finetune_table.json]

Every variant starts from the shared pretrained ResNet-20 and is fine-tuned for --epochs on the 45,000
training images not held out for validation (CPU size: 1-3 epochs). Each resulting backbone is converted with
per-layer B calibrated on 10,000 training images and measured on the 10,000 test images at every alpha, both
as converted and after leakage compensation measured on 2,000 training images. Prints the table and, per
variant, the lowest alpha within 1 point of the pretrained backbone. With --from-scratch each backbone is
trained from random weights (Insight 2 at CPU size: --train-limit images, a few epochs) and compared with
itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.conversion.corrections import compensate_leakage
from pann.data import calibration_images, load_dataset
from pann.evaluate import accuracy, calibrated
from pann.models.builders import resnet20
from pann.training.trainer import TrainConfig, train
from pann.user_input import parse_alphas

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

VARIANTS = {
    "post-training": None,
    "wd 5e-4": {"weight_decay": 5e-4},
    "wd 0": {"weight_decay": 0.0},
    "wd 0 + Mixup 0.2": {"weight_decay": 0.0, "mixup_alpha": 0.2},
    "wd 0 + negative noise B 2^-7": {"weight_decay": 0.0, "leakage": "noise", "alpha": 7},
    "wd 0 + random slope 0.05": {"weight_decay": 0.0, "leakage": "random-slope", "slope": 0.05},
    "wd 0 + approximation-aware 7": {"weight_decay": 0.0, "leakage": "approximation-aware", "alpha": 7},
    "wd 0 + approximation-aware 6": {"weight_decay": 0.0, "leakage": "approximation-aware", "alpha": 6},
    # Insight 2 (run with --variants): only the weight decay differs.
    "wd 1e-4": {"weight_decay": 1e-4},
    "wd 5e-3": {"weight_decay": 5e-3},
}
DEFAULT_VARIANTS = [name for name in list(VARIANTS)[:8] if name != "wd 5e-4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--alphas", default="4-10")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--variants", help="comma-separated subset of variant names")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train each backbone from random weights instead of fine-tuning the shared one")
    parser.add_argument("--train-limit", type=int, help="train on only the first N non-validation images")
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/finetune_table.json"))
    args = parser.parse_args()
    alphas = parse_alphas(args.alphas)
    weights = args.data_dir / "resnet20_cifar10.pt"
    test = load_dataset("cifar10", "test", args.data_dir)
    train_set = load_dataset("cifar10", "train", args.data_dir)
    calibration, correction = calibration_images(train_set, 10000), calibration_images(train_set, 2000)
    pretrained_accuracy = accuracy(resnet20(weights=weights), test)
    names = args.variants.split(",") if args.variants else DEFAULT_VARIANTS
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    results = []
    for name in names:
        start = time.perf_counter()
        overrides = VARIANTS[name]
        if overrides is None:
            model = resnet20(weights=weights)
        else:
            config = TrainConfig.from_dict({"pretrained": None if args.from_scratch else str(weights),
                                            "data_dir": str(args.data_dir), "train_limit": args.train_limit,
                                            "epochs": args.epochs, "lr": args.lr, "schedule": "cosine", **overrides})
            model = train(config, progress=False).model
        backbone = accuracy(model, test)
        observed = calibrated(model, calibration)
        row = {"variant": name, "backbone": backbone, "plain": {}, "corrected": {}}
        for alpha in alphas:
            pann = convert(observed, relu_for_precision(alpha))
            row["plain"][alpha] = accuracy(pann, test)
            compensate_leakage(pann, [x for x, _ in correction.batches(500)])
            row["corrected"][alpha] = accuracy(pann, test)
        row["seconds"] = time.perf_counter() - start
        results.append(row)
        cells = " ".join(f"{100 * row['plain'][a]:.2f}/{100 * row['corrected'][a]:.2f}" for a in alphas)
        print(f"{name:<30} backbone {100 * backbone:.2f}  {cells}  ({row['seconds']:.0f} s)", flush=True)

    reference = "its own backbone" if args.from_scratch else f"the pretrained backbone ({100 * pretrained_accuracy:.2f}%)"
    print(f"\nlowest alpha within 1 point of {reference}:")
    for row in results:
        target = (row["backbone"] if args.from_scratch else pretrained_accuracy) - 0.01
        for kind in ("plain", "corrected"):
            ok = [a for a in alphas if row[kind][a] >= target]
            row[f"lowest_alpha_{kind}"] = min(ok) if ok else None
        print(f"  {row['variant']:<30} as converted: {row['lowest_alpha_plain']}, "
              f"with corrections: {row['lowest_alpha_corrected']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"epochs": args.epochs, "lr": args.lr, "alphas": alphas,
                                     "from_scratch": args.from_scratch, "train_limit": args.train_limit,
                                     "pretrained_accuracy": pretrained_accuracy, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
