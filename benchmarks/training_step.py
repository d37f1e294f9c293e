"""Training steps with polynomials in the loop vs the plain step, on the same batch, in one run.

    python benchmarks/training_step.py [--model resnet20] [--batch 128] [--alphas 9,13] [--threads 2]
        [--per-layer "5.625:layer3=5"]

Times one SGD step (forward, cross-entropy, backward, update) in train mode of: the backbone; its PANN
(forward and backward through the polynomials, compiled and eager); and, with ``--per-layer``, the step a
trained search's trial takes (:func:`pann.training.trainer.train`: approximation-aware ReLUs, each layer at
its alpha of the config ``ALPHA[:GROUP=ALPHA,...]``, polynomial value forward, ReLU gradient), uniform and per
layer. Prints the median of --repeats steps after a warm-up (and compilation), and each ratio to the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import convert, prepare, replace_activations
from pann.conversion.groups import alphas_by_layer
from pann.data import synthetic
from pann.evaluate import calibrated
from pann.models.builders import build_model
from pann.training.techniques import ApproximationAwareReLU


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


def aware_model(backbone: torch.nn.Module, alpha: float, groups: dict[str, float]) -> torch.nn.Module:
    """The network a trained trial steps: approximation-aware ReLUs, each layer at its alpha."""
    alphas = alphas_by_layer(prepare(backbone), groups, alpha)
    model = replace_activations(backbone, lambda: ApproximationAwareReLU(relu_for_precision(alpha)),
                                require_polynomial=False)
    for name, module in model.named_modules():
        if isinstance(module, ApproximationAwareReLU):
            module.set_approximation(relu_for_precision(alphas[name]))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alphas", default="9,13")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-layer", help="ALPHA[:GROUP=ALPHA,...]: also time a trained trial's step at it")
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
    if args.per_layer:
        alpha, _, rest = args.per_layer.partition(":")
        groups = {g: float(a) for g, a in (item.split("=") for item in rest.split(",") if item)}
        for label, config in ((f"aware, uniform alpha {float(alpha):g}", {}), (f"aware, per layer {args.per_layer}", groups)):
            seconds = step_time(aware_model(build_model(args.model), float(alpha), config), x, y, args.repeats)
            print(f"{label:<36} {seconds * 1000:8.1f} ms   ratio {seconds / plain:.2f}")


if __name__ == "__main__":
    main()
