"""Is worst-case precision what a network's accuracy follows? Degree sets of the same depth, post-training.

    python experiments/same_depth_approximations.py --degrees 7 --degrees 15 --degrees 3,3 --degrees 3,7 \\
        --degrees 31 [--model resnet20] [--weights resnet20_cifar10.pt] [--data-dir ../shared/data]
        [--json docs/measurements/same_depth_approximations.json]

The catalog gives an alpha the least-depth composite that reaches it, then the one with the fewest
multiplications (``pann.approximation.catalog.relu_for_precision``); a search on levels or bootstraps would rather have the
*most precise* set of each depth. This measures whether that would pay: every ``--degrees`` set (a composite of
odd stage degrees) in every ReLU of the pretrained backbone, B per layer from 2,000 training images (margin 1),
no correction; its precision (bits, worst case on the interval), its levels and the network's cost under
``--preset``, and its accuracy on the first 2,000 test images. The JSON is rewritten after every set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pann.approximation.composite import ReluApproximation
from pann.approximation.catalog import get_approximation
from pann.conversion.flow import convert
from pann.cost.preset import load_preset
from pann.data import calibration_images, load_dataset
from pann.evaluate import accuracies, calibrated
from pann.files import write_bytes_atomic
from pann.models.builders import build_model
from pann.cost.network import network_cost

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def approximation_arg(text: str) -> ReluApproximation:
    """``"3,7"`` -> the composite with those stage degrees (solved or read from the catalog's cache), before
    any data loads."""
    try:
        return get_approximation("composite", tuple(int(d) for d in text.split(",")))
    except ValueError as exc:
        raise SystemExit(f"same_depth_approximations: --degrees {text!r}: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degrees", action="append", required=True, help="a degree set, e.g. 3,7 (repeatable)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", default="resnet20_cifar10.pt", help="in the data folder, or a path")
    parser.add_argument("--preset", default="mpcnn")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/same_depth_approximations.json"))
    args = parser.parse_args()
    approximations = [approximation_arg(d) for d in args.degrees]
    preset = load_preset(args.preset)
    train = load_dataset("cifar10", "train", args.data_dir)
    validation = load_dataset("cifar10", "test", args.data_dir).subset(slice(0, 2000))
    weights = args.weights if Path(args.weights).is_file() else args.data_dir / args.weights
    observed = calibrated(build_model(args.model, 10, weights=weights), calibration_images(train, 2000))
    out = {"model": args.model, "weights": str(args.weights), "preset": args.preset, "rows": []}
    for approximation in approximations:
        cost = network_cost(observed, preset, approximations=approximation)
        accuracy = accuracies([convert(observed, approximation)], validation)[0]
        out["rows"].append({"degrees": list(approximation.degrees), "precision": approximation.precision,
                            "relu_levels": approximation.depth, "bootstraps": cost.bootstraps,
                            "polynomial_levels": cost.polynomial_levels, "validation": accuracy})
        write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())
        print(f"{','.join(map(str, approximation.degrees)):>8}  precision {approximation.precision:.3f}  levels/ReLU "
              f"{approximation.depth}  {cost.bootstraps} bootstraps  {cost.polynomial_levels} polynomial levels  "
              f"validation {100 * accuracy:.2f}%", flush=True)


if __name__ == "__main__":
    main()
