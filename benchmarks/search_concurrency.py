"""Search wall time with 1 vs 2 concurrent trials, and backbone trainings with and without reuse.

    python benchmarks/search_concurrency.py [--trials 6] [--out docs/measurements/bench_search.txt]

Runs the same small search (ResNet-20 on the synthetic dataset, two training settings, each trial
training 2 epochs on 512 images when it cannot reuse a stored backbone) three times on a local Ray
instance, each in a fresh folder with its own MLflow store: concurrency 1 and 2 with backbone reuse,
and concurrency 2 without. Prints wall times, the parallel efficiency (t1 / (2 t2)) and the number of
backbone trainings per number of trials. All three runs happen in one process, one after the other.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from search import config
from search.runner import run_search


def search_config(folder: Path, name: str, trials: int, concurrency: int, reuse: bool) -> config.SearchConfig:
    return config.from_dict({
        "name": name, "target_accuracy": 0.3,
        "backbone": {"model": "resnet20", "dataset": "synthetic", "validation_size": 200, "calibration_size": 200},
        "training": {"batch_size": 16, "train_limit": 512, "lr": 0.05, "amp": False},
        "space": {"alpha": {"low": 6, "high": 9}, "epochs": [2], "weight_decay": [0.0, 0.0005]},
        "budget": {"trials": trials, "concurrency": concurrency, "cpus_per_trial": 1},
        "search": {"seed": 0, "early_stopping": False, "neighbours": 1, "reuse_backbones": reuse},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [f"{os.cpu_count()} CPUs; {args.trials} trials per search"]
    walls = {}
    for concurrency, reuse in ((1, True), (2, True), (2, False)):
        with tempfile.TemporaryDirectory() as tmp:
            search = search_config(Path(tmp), f"bench-c{concurrency}-{'reuse' if reuse else 'noreuse'}",
                                   args.trials, concurrency, reuse)
            start = time.perf_counter()
            outcome = run_search(search)
            walls[concurrency, reuse] = time.perf_counter() - start
        lines.append(f"concurrency {concurrency}, reuse {'on ' if reuse else 'off'}: {walls[concurrency, reuse]:6.1f} s, "
                     f"{outcome.trials} trials, {outcome.backbone_trainings} backbone trainings")
    t1, t2 = walls[1, True], walls[2, True]
    lines.append(f"speed-up 1 -> 2 concurrent trials: {t1 / t2:.2f}x, parallel efficiency {t1 / (2 * t2):.2f}")
    lines.append(f"reuse off / on wall time (concurrency 2): {walls[2, False] / t2:.2f}x")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
