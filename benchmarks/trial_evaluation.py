"""One post-training trial's evaluation against one backbone pass over the same images.

    PANN_DATA_DIR=../shared/data python benchmarks/trial_evaluation.py [--model resnet20] [--images 2000]
        [--repeats 3] [--batchnorm-images 2000] [--out docs/measurements/bench_trial_evaluation.txt]

In one process: a backbone pass over the first N test images, then a per-layer trial's evaluation as the
search runs it (build the PANN from the cached ranges with a random alpha in 4..10 per layer, fused compiled
kernels, evaluate the same images, count its network cost under the mpcnn preset), after one untimed
warm-up trial that pays the compilation. Prints the median times and their ratio. With ``--batchnorm-images N``
each trial also re-estimates its batch norms on N augmented training images (the search's correction
``batchnorm``, applied between conversion and evaluation), and that re-estimation is timed on its own too.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import calibrate, convert, prepare
from pann.conversion.corrections import reestimate_batchnorm
from pann.cost.preset import load_preset
from pann.data import default_data_dir, load_dataset
from pann.evaluate import accuracy
from pann.conversion.groups import layer_groups
from pann.models.builders import build_model
from pann.cost.network import network_cost
from pann.models.weights import resolve


def trial(observed, names: list[str], test, preset, rng: random.Random, batchnorm: list[torch.Tensor]) -> float:
    """One trial; returns the seconds its batch-norm re-estimation took (0 without ``batchnorm`` images)."""
    pann = convert(observed, {n: relu_for_precision(rng.randint(4, 10)) for n in names})
    start = time.perf_counter()
    if batchnorm:
        reestimate_batchnorm(pann, batchnorm)
    seconds = time.perf_counter() - start
    network_cost(pann, preset)
    accuracy(pann, test)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets 1 CPU)")
    parser.add_argument("--batchnorm-images", type=int, default=0,
                        help="re-estimate batch norms on this many augmented training images in each trial")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model, 10, resolve(f"{args.model}_cifar10", default_data_dir()))
    test = load_dataset("cifar10", "test").subset(slice(0, args.images))
    train = load_dataset("cifar10", "train")
    observed = prepare(model)
    calibrate(observed, (x for x, _ in train.subset(slice(0, 2000)).batches(500)))
    batchnorm = [x for x, _ in train.subset(slice(0, args.batchnorm_images)).batches(
        500, augment=True, generator=torch.Generator().manual_seed(0))]
    names = layer_groups(observed, "layer")
    preset, rng = load_preset("mpcnn"), random.Random(0)
    for alpha in range(4, 11):
        relu_for_precision(alpha)
    trial(observed, list(names), test, preset, rng, batchnorm)  # warm-up: compilation
    backbone, pann, reestimation = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        accuracy(model, test)
        backbone.append(time.perf_counter() - start)
        start = time.perf_counter()
        reestimation.append(trial(observed, list(names), test, preset, rng, batchnorm))
        pann.append(time.perf_counter() - start)
    b, p, r = statistics.median(backbone), statistics.median(pann), statistics.median(reestimation)
    text = (f"{args.model}, {args.images} images, {args.threads} thread(s), median of {args.repeats}: "
            f"backbone pass {b:.2f} s, per-layer trial evaluation {p:.2f} s, ratio {p / b:.2f}\n")
    if batchnorm:
        text += (f"the trial includes batch-norm re-estimation on {args.batchnorm_images} augmented training "
                 f"images: {r:.2f} s, {100 * r / p:.0f}% of the trial\n")
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
