"""PANN forward time relative to the backbone on the same batch, measured in one run.

    python benchmarks/pann_forward.py [--model resnet20] [--batch 500] [--threads 2] [--alphas 9,13]

Uses the shared pretrained weights and CIFAR-10 test images when ../shared/data is there
(random images and weights otherwise). Prints the median of --repeats timings per variant
and its ratio to the backbone: the fused compiled float32 path (the default), the eager
float32 path (the fallback) and the eager float64 reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.data import load_dataset
from pann.evaluate import calibrated
from pann.models.builders import build_model

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
VARIANTS = {"compiled float32": (torch.float32, True), "eager float32": (torch.float32, False),
            "eager float64 (reference)": (torch.float64, False)}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alphas", default="9,13")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    weights = SHARED / f"{args.model}_cifar10.pt"
    if weights.is_file():
        model = build_model(args.model, weights=weights)
        test = load_dataset("cifar10", "test", SHARED).subset(slice(0, args.batch))
        calibration = load_dataset("cifar10", "train", SHARED).subset(slice(0, 2000))
        batch, source = next(test.batches(args.batch))[0], "CIFAR-10 test images, pretrained weights"
    else:
        model = build_model(args.model)
        calibration = load_dataset("synthetic", "train")
        batch, source = torch.rand(args.batch, 3, 32, 32), "random images and weights"
    model = model.eval().to(args.device)
    batch = batch.to(args.device)
    observed = calibrated(model, calibration, device=args.device)

    def run(module):
        module(batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"{args.model}, batch {args.batch}, {args.threads} threads, {args.device}, {source}, torch {torch.__version__}")
    with torch.no_grad():
        backbone = median_time(lambda: run(model), args.repeats)
        print(f"{'backbone':<40} {backbone * 1000:9.1f} ms   ratio 1.00")
        for alpha in (float(a) for a in args.alphas.split(",")):
            approx = relu_for_precision(alpha)
            for name, (dtype, compiled) in VARIANTS.items():
                pann = convert(observed, approx, "layer", 1.0, dtype=dtype, compiled=compiled).eval()
                seconds = median_time(lambda: run(pann), args.repeats)
                label = f"PANN alpha {alpha:g} {name}"
                print(f"{label:<40} {seconds * 1000:9.1f} ms   ratio {seconds / backbone:.2f}   ({approx.name})")


if __name__ == "__main__":
    main()
