"""Network vs stage vs layer granularity, and the deterministic walks, on one pretrained backbone.

    PANN_DATA_DIR=../shared/data python experiments/per_layer_table.py --model resnet20 \\
        --weights resnet20_cifar10.pt --target 0.9073 --trials 100 --out docs/measurements/per_layer_resnet20

Runs the searches of ``--variants``, one after the other, each in its own folder under WORK with its own MLflow
store: granularity network (Optuna over the uniform alpha, neighbours 1), stage and layer (Optuna, warm-started
with the uniform points), and layer with the greedy baseline and with the best-first walk (``search.strategy``),
all on the same trial budget (network: one
trial per alpha it can sample). Validation, confirmation and test images are consecutive, disjoint slices
of the test set (the backbone saw the whole training set). Writes OUT/table.json and OUT/table.md: per
search its answer's validation / confirmation / test accuracy, bootstraps, levels, polynomial levels,
mean alpha, estimated latency (preset ``--preset``), trials and wall time, and the uniform baseline.
``--correction batchnorm`` re-estimates every PANN's batch-norm statistics on ``--batchnorm-images``
augmented training images (in every trial, and for the answer's confirmation, test and export).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pann.user_input import parse_alphas
from search import config
from search.config_checks import CORRECTIONS
from search.runner import run_search

VARIANTS = {  # name: (granularity, strategy)
    "network": ("network", "optuna"), "stage": ("stage", "optuna"), "layer": ("layer", "optuna"),
    "layer-greedy": ("layer", "greedy"), "layer-best-first": ("layer", "best-first"),
}


def variants_arg(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown search {', '.join(unknown) or '(none)'}: expected some of "
                                         f"{', '.join(VARIANTS)}")
    return names


def search_config(args: argparse.Namespace, variant: str, folder: Path) -> config.SearchConfig:
    granularity, strategy = VARIANTS[variant]
    alphas = {"low": args.alpha_low, "high": args.alpha_high}
    if args.ladder and granularity != "network":  # the network search's curve needs whole bits
        alphas = args.ladder
    trials = args.trials if granularity != "network" else args.alpha_high - args.alpha_low + 1
    return config.from_dict({
        "name": f"{args.model}-{variant}", "target_accuracy": args.target,
        "backbone": {"model": args.model, "dataset": "cifar10", "weights": args.weights, "validation_from": "test",
                     "validation_size": args.validation, "confirmation_size": args.confirmation,
                     "calibration_size": args.calibration, "batchnorm_size": args.batchnorm_images},
        "space": {"alpha": alphas, "epochs": [0], "scope": ["layer"], "margin": [args.margin],
                  "correction": [args.correction]},
        "budget": {"trials": trials, "concurrency": args.concurrency, "cpus_per_trial": 1},
        "search": {"seed": 0, "early_stopping": False, "granularity": granularity, "strategy": strategy,
                   "cost": args.cost, "preset": args.preset, "neighbours": 1 if granularity == "network" else 0,
                   "confirmations": args.confirmations, "validation_margin": args.validation_margin},
        "storage": str(folder / "runs"), "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
    })


def row(variant: str, outcome, seconds: float) -> dict:
    answer = outcome.answer
    base = {"search": variant, "trials": outcome.trials, "wall_s": round(seconds, 1),
            "front_points": len(outcome.front), "candidates_checked": len(outcome.checked),
            "checked": [{"mean_alpha": p.alpha, "validation": p.accuracy, "confirmation": score, **dict(p.costs)}
                        for p, score in outcome.checked]}
    if answer is None:
        return {**base, "answer": None}
    return {**base, "answer": answer.trial, "mean_alpha": answer.alpha, "validation": answer.accuracy,
            "confirmation": outcome.confirmation_accuracy, "test": outcome.test_accuracy, **dict(answer.costs),
            "group_alphas": {k: v for k, v in answer.params.items() if k.startswith("alpha")},
            "mlflow_parent_run": outcome.parent_run_id}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = ("| search | trials | wall (s) | mean alpha | validation | confirmation | test | bootstraps | levels | "
            "polynomial levels | est. latency (s) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if r.get("answer") is None:
            lines.append(f"| {r['search']} | {r['trials']} | {r['wall_s']:.0f} | no confirmed answer |||||||| ")
            continue
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        lines.append(f"| {r['search']} | {r['trials']} | {r['wall_s']:.0f} | {r['mean_alpha']:.2f} | "
                     f"{pct(r['validation'])} | {pct(r['confirmation'])} | {pct(r['test'])} | "
                     f"{r.get('bootstraps', '-'):g} | {r.get('levels', '-'):g} | {r.get('polynomial_levels', '-'):g} | "
                     f"{r.get('latency_s', '-'):.0f} |")
    return (f"{args.model}, target {100 * args.target:.2f}%, preset {args.preset}, cost objective {args.cost}, "
            f"correction {args.correction}; alphas {args.alpha_low}-{args.alpha_high}"
            + (f" (stage and layer: the ladder {', '.join(f'{a:g}' for a in args.ladder)})" if args.ladder else "")
            + (f"; validation margin {args.validation_margin:g}" if args.validation_margin else "")
            + "; "
            f"validation {args.validation} / confirmation {args.confirmation} / test the other test images\n\n"
            + head + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", default="resnet20_cifar10.pt")
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--alpha-low", type=int, default=4)
    parser.add_argument("--alpha-high", type=int, default=10)
    parser.add_argument("--ladder", type=parse_alphas, help="the alphas of the stage and layer searches instead of "
                        "the whole bits alpha-low..alpha-high, e.g. 5,5.625,6,7,8 (5.625: the depth-5 rung)")
    parser.add_argument("--validation", type=int, default=2000)
    parser.add_argument("--confirmation", type=int, default=2000)
    parser.add_argument("--calibration", type=int, default=5000)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--correction", default="none", choices=CORRECTIONS)
    parser.add_argument("--batchnorm-images", type=int, default=2000,
                        help="augmented training images for --correction batchnorm")
    parser.add_argument("--cost", default="levels", choices=("alpha", "bootstraps", "levels", "latency"))
    parser.add_argument("--preset", default="mpcnn")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--confirmations", type=int, default=20,
                        help="validation-feasible candidates scored on the confirmation images at most")
    parser.add_argument("--validation-margin", type=float, default=0.0,
                        help="accuracy over the target a point needs on the validation images to count as feasible")
    parser.add_argument("--variants", default=",".join(VARIANTS), type=variants_arg,
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.json and table.md")
    parser.add_argument("--work", type=Path, help="folder for the searches' runs and MLflow stores "
                        "(default runs/per_layer/MODEL)")
    args = parser.parse_args()
    args.work = args.work or Path("runs") / "per_layer" / args.model
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants:
        folder = args.work / variant
        start = time.perf_counter()
        outcome = run_search(search_config(args, variant, folder))
        rows.append(row(variant, outcome, time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "table.json").write_text(json.dumps(rows, indent=1, default=str))
        (args.out / "table.md").write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
