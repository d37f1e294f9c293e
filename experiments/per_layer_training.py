"""A backbone trained with a per-layer PANN in the loop, evaluated at per-layer alphas, with its costs.

    python experiments/per_layer_training.py --weights runs/resnet20_layer_kd.pt \\
        --config "6:layer2=5,layer3=5" --config "6" [--model resnet20] [--pretrained resnet20_cifar10.pt]
        [--data-dir ../shared/data] [--json docs/measurements/per_layer_training.json]

Each ``--config`` is ``ALPHA[:GROUP=ALPHA,...]``: the alpha of every activation layer, then the alpha of some
stages or layers (``pann.conversion.groups.alphas_by_layer``). The same split as ``recipe_table.py``: B calibrated on 2,000
training images; validation = the first 2,000 test images (what chooses), held out = the other 8,000 (what
confirms: within 1 point of the pretrained backbone there, >= 90.75% for the shared ResNet-20). Per config it
measures the PANN as converted (B from the exact-ReLU backbone's ranges) and with every B recalibrated under the
PANN itself (``pann.conversion.corrections.recalibrate_bounds``, margin 1, on the same 2,000 training images), and its cost
under ``--preset`` (bootstraps, levels, polynomial levels). The JSON is rewritten after every config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.conversion.corrections import recalibrate_bounds
from pann.cost.preset import load_preset
from pann.data import calibration_images, load_dataset
from pann.evaluate import accuracies, calibrated
from pann.files import write_bytes_atomic
from pann.conversion.groups import alphas_by_layer
from pann.models.builders import build_model
from pann.cost.network import network_cost

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def parse_config(text: str) -> tuple[float, dict[str, float]]:
    """``"6:layer2=5,layer3=5"`` -> ``(6.0, {"layer2": 5.0, "layer3": 5.0})``."""
    alpha, _, groups = text.partition(":")
    try:
        return float(alpha), {g: float(a) for g, a in (item.split("=") for item in groups.split(",") if item)}
    except ValueError:
        raise SystemExit(f"per_layer_training: --config {text!r}: expected ALPHA[:GROUP=ALPHA,...]") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="the trained backbone (pann train --out)")
    parser.add_argument("--config", action="append", required=True, help="ALPHA[:GROUP=ALPHA,...] (repeatable)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--pretrained", default="resnet20_cifar10.pt", help="the reference backbone (data folder)")
    parser.add_argument("--preset", default="mpcnn")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/per_layer_training.json"))
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config]
    preset = load_preset(args.preset)
    test = load_dataset("cifar10", "test", args.data_dir)
    train = load_dataset("cifar10", "train", args.data_dir)
    calibration = calibration_images(train, 2000)
    images = [x for x, _ in calibration.batches(500)]
    parts = {"validation": test.subset(slice(0, 2000)), "held_out": test.subset(slice(2000, None))}
    pretrained = build_model(args.model, 10, weights=args.data_dir / args.pretrained)
    trained = build_model(args.model, 10, weights=args.weights)
    out = {"model": args.model, "weights": str(args.weights), "preset": args.preset,
           "pretrained": {p: accuracies([pretrained], d)[0] for p, d in parts.items()},
           "trained_exact_relu": {p: accuracies([trained], d)[0] for p, d in parts.items()}, "rows": []}
    print(f"pretrained backbone: {out['pretrained']}; trained backbone with exact ReLUs: "
          f"{out['trained_exact_relu']}", flush=True)
    observed = calibrated(trained, calibration)
    for alpha, groups in configs:
        alphas = alphas_by_layer(observed, groups, alpha)
        approximations = {name: relu_for_precision(a) for name, a in alphas.items()}
        cost = network_cost(observed, preset, approximations=approximations)
        row = {"alpha": alpha, "groups": groups, "mean_alpha": sum(alphas.values()) / len(alphas),
               "bootstraps": cost.bootstraps, "levels": cost.levels, "polynomial_levels": cost.polynomial_levels}
        as_converted = convert(observed, approximations)
        recalibrated = convert(observed, approximations)
        recalibrate_bounds(recalibrated, images)
        for part, data in parts.items():
            row[part] = dict(zip(("as_converted", "recalibrated"), accuracies([as_converted, recalibrated], data)))
        out["rows"].append(row)
        write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())
        print(f"alpha {alpha:g} {groups}: {cost.bootstraps} bootstraps, {cost.polynomial_levels} polynomial levels; "
              + "; ".join(f"{part} as converted {100 * row[part]['as_converted']:.2f}%, B recalibrated "
                          f"{100 * row[part]['recalibrated']:.2f}%" for part in parts), flush=True)


if __name__ == "__main__":
    main()
