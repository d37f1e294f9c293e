"""Fast PANN path (fused compiled float32) against the eager float64 reference, per alpha.

    python benchmarks/fast_path_agreement.py [--model resnet20] [--alphas 4-14] [--deviation-images 500]

Needs ../shared/data. Reports, for each alpha, the test accuracy of both paths on the 10,000 CIFAR-10
test images and the largest elementwise deviation of the fast polynomial layers from the float64
reference evaluated on the very same layer inputs (first --deviation-images images), absolute and as
a fraction of the approximation's own error B 2^-alpha.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.data import load_dataset
from pann.evaluate import accuracy_curve, calibrated
from pann.models.builders import build_model
from pann.conversion.modules import PolyReLU
from pann.user_input import parse_alphas

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@torch.no_grad()
def max_deviation(observed, alpha: float, images: torch.Tensor) -> tuple[float, float]:
    """Largest |fast - reference| over all polynomial ReLUs on inputs inside [-B, B] (outside, both
    diverge and their difference means nothing), absolute and relative to B 2^-precision."""
    approx = relu_for_precision(alpha)
    fast = convert(observed, approx).eval()
    reference = dict(convert(observed, approx, dtype=torch.float64, compiled=False).named_modules())
    worst = [0.0, 0.0]

    def compare(name):
        def hook(module, inputs, output):
            expected = reference[name](inputs[0].double())
            bound = module.bound.item()
            inside = inputs[0].abs() <= bound
            deviation = (output.double() - expected).abs()[inside].max().item()
            worst[0] = max(worst[0], deviation)
            worst[1] = max(worst[1], deviation / (bound * 2.0**-approx.precision))
        return hook

    for name, module in fast.named_modules():
        if isinstance(module, PolyReLU):
            module.register_forward_hook(compare(name))
    fast(images)
    return worst[0], worst[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--alphas", default="4-14")
    parser.add_argument("--deviation-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--deviation-only", action="store_true", help="skip the two 10,000-image accuracy curves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    alphas = parse_alphas(args.alphas)

    model = build_model(args.model, weights=SHARED / f"{args.model}_cifar10.pt")
    test = load_dataset("cifar10", "test", SHARED)
    train = load_dataset("cifar10", "train", SHARED)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    observed = calibrated(model, train.subset(order[:10000]))

    images = next(test.batches(args.deviation_images))[0]
    if args.deviation_only:
        print(f"{'alpha':>5} {'max |dev|':>10} {'dev / (B 2^-a)':>15}   ({len(images)} images, inputs inside [-B, B])")
        for alpha in alphas:
            absolute, relative = max_deviation(observed, alpha, images)
            print(f"{alpha:5g} {absolute:10.2e} {relative:15.4f}")
        return
    start = time.perf_counter()
    fast = accuracy_curve(observed, test, alphas)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = accuracy_curve(observed, test, alphas, dtype=torch.float64, compiled=False)
    reference_seconds = time.perf_counter() - start

    rows = []
    print(f"{args.model}, {len(test)} test images; fast curve {fast_seconds:.0f} s, reference curve {reference_seconds:.0f} s")
    print(f"{'alpha':>5} {'fast %':>8} {'ref %':>8} {'diff':>6} {'max |dev|':>10} {'dev / (B 2^-a)':>15}")
    for alpha, f, r in zip(alphas, fast, reference):
        absolute, relative = max_deviation(observed, alpha, images)
        rows.append({"alpha": alpha, "fast_accuracy": f.accuracy, "reference_accuracy": r.accuracy,
                     "max_deviation": absolute, "deviation_over_error": relative})
        print(f"{alpha:5g} {100 * f.accuracy:8.2f} {100 * r.accuracy:8.2f} {100 * (f.accuracy - r.accuracy):6.2f} "
              f"{absolute:10.2e} {relative:15.4f}")
    if args.json:
        args.json.write_text(json.dumps({"fast_seconds": fast_seconds, "reference_seconds": reference_seconds,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
