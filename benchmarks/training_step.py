"""Approximation-aware training step (forward + backward through the polynomials) vs the plain step.

    python benchmarks/training_step.py [--model resnet20] [--batch 128] [--alphas 9,13] [--threads 2]

Times one SGD step (forward, cross-entropy, backward, update) of the backbone and of its PANN, in
train mode, on the same batch; prints the median of --repeats steps after a warm-up (and compilation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert
from pann.data import synthetic
from pann.evaluate import calibrated
from pann.models.builders import build_model


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    step()  # warm-up, compilation of forward and backward
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alphas", default="9,13")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = synthetic(args.batch)
    x, y = next(data.batches(args.batch))
    model = build_model(args.model)
    observed = calibrated(model, data)
    plain = step_time(model, x, y, args.repeats)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'plain training step':<36} {plain * 1000:8.1f} ms   ratio 1.00")
    for alpha in (float(a) for a in args.alphas.split(",")):
        for compiled in (True, False):
            pann = convert(observed, relu_for_precision(alpha), compiled=compiled)
            seconds = step_time(pann, x, y, args.repeats)
            label = f"PANN alpha {alpha:g} {'compiled' if compiled else 'eager'}"
            print(f"{label:<36} {seconds * 1000:8.1f} ms   ratio {seconds / plain:.2f}")


if __name__ == "__main__":
    main()
