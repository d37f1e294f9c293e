"""The ``pann`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pann.approximation import FAMILIES, ReluApproximation
from pann.catalog import MAX_ALPHA, MIN_ALPHA, check_alpha, get_approximation, relu_for_precision


class UsageError(ValueError):
    """Bad command-line input."""


def parse_alphas(text: str) -> list[float]:
    """``'4-14'``, ``'4,6,8'`` or ``'9'`` -> alphas, each checked against the supported range."""
    alphas: list[float] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            if sep:
                first, last = int(lo), int(hi)
                if first > last:
                    raise UsageError(f"empty alpha range {part!r}")
                alphas += [float(a) for a in range(first, last + 1)]
            else:
                alphas.append(float(lo))
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot read alphas {text!r}; expected e.g. 4-14, 4,6,8 or 9") from exc
    return [check_alpha(a) for a in alphas]


def parse_degrees(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError as exc:
        raise UsageError(f"cannot read degrees {text!r}; expected odd integers like 15,15") from exc


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _approx_row(a: ReluApproximation) -> str:
    return (f"{','.join(map(str, a.degrees)):<12} {a.precision:9.3f} {a.depth:6d} {a.multiplications:6d}")


def cmd_approx(args: argparse.Namespace) -> None:
    if args.degrees:
        approximations = [get_approximation(args.family, parse_degrees(args.degrees))]
        targets: list[float | None] = [None]
    else:
        if args.family != "composite":
            raise UsageError("--alphas searches composite degree sets; give --degrees for a direct family")
        targets = list(parse_alphas(args.alphas))
        approximations = [relu_for_precision(alpha) for alpha in targets]
    if args.json:
        rows = [{"alpha": t, **a.to_dict()} for t, a in zip(targets, approximations)]
        json.dump(rows if len(rows) > 1 or not args.degrees else rows[0], sys.stdout, indent=2)
        print()
        return
    print(f"{'alpha':>5}  {'family':<13} {'degrees':<12} {'precision':>9} {'depth':>6} {'mults':>6}")
    for target, approx in zip(targets, approximations):
        label = f"{target:g}" if target is not None else "-"
        print(f"{label:>5}  {approx.family:<13} {_approx_row(approx)}")
    print("precision: -log2 max|r(t) - ReLU(t)| on [-1, 1]; depth and non-scalar multiplications of one ReLU")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from pann.convert import interval_bounds
    from pann.data import NUM_CLASSES, load_dataset
    from pann.evaluate import accuracy, accuracy_curve, calibrated
    from pann.models import build_model

    alphas = parse_alphas(args.alphas)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.model, NUM_CLASSES[args.dataset], weights=args.weights)
    test = load_dataset(args.dataset, "test", args.data_dir)
    train = load_dataset(args.dataset, "train", args.data_dir)
    if args.limit:
        test = test.subset(slice(0, args.limit))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    calibration = train.subset(order[:args.calibration_size])
    progress = not args.json
    start = time.perf_counter()
    backbone_accuracy = accuracy(model, test, args.batch_size, device, "backbone" if progress else None)
    backbone_seconds = time.perf_counter() - start
    observed = calibrated(model, calibration, args.batch_size, device)
    bounds = interval_bounds(observed, args.interval, args.margin)
    start = time.perf_counter()
    curve = accuracy_curve(observed, test, alphas, args.interval, args.margin, args.batch_size, device,
                           progress=progress)
    curve_seconds = time.perf_counter() - start
    if args.json:
        json.dump({"model": args.model, "weights": args.weights, "dataset": args.dataset,
                   "test_images": len(test), "calibration_images": len(calibration),
                   "interval": args.interval, "margin": args.margin, "bounds": bounds,
                   "backbone_accuracy": backbone_accuracy, "backbone_seconds": backbone_seconds,
                   "curve_seconds": curve_seconds, "curve": [p.to_dict() for p in curve]},
                  sys.stdout, indent=2)
        print()
        return
    values = list(bounds.values())
    print(f"{args.model} on {args.dataset}: {len(test)} test images, device {device}")
    print(f"backbone accuracy {100 * backbone_accuracy:.2f}% ({backbone_seconds:.1f} s); "
          f"{len(curve)} PANNs evaluated in {curve_seconds:.1f} s")
    print(f"interval {args.interval}, margin {args.margin:g}, calibrated on {len(calibration)} training images: "
          f"B from {min(values):.3g} to {max(values):.3g} over {len(values)} layers")
    print(f"{'alpha':>5}  {'degrees':<12} {'precision':>9} {'depth':>6} {'mults':>6} {'accuracy':>9} {'out-of-range':>13}")
    for p in curve:
        print(f"{p.alpha:>5g}  {','.join(map(str, p.degrees)):<12} {p.precision:9.3f} {p.depth:6d} "
              f"{p.multiplications:6d} {100 * p.accuracy:8.2f}% {100 * p.out_of_range:12.5f}%")


def read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of fields, got {type(data).__name__}")
    return data


def cmd_train(args: argparse.Namespace) -> None:
    from pann.models import save_weights
    from pann.training import TrainConfig, TrainingDiverged, train

    config = TrainConfig.from_dict(read_yaml(args.config))
    out = args.out
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")

    def report(epoch: int, metrics: dict) -> None:
        print(f"epoch {epoch}/{config.epochs}: train loss {metrics['train_loss']:.4f}, "
              f"validation loss {metrics['val_loss']:.4f}, validation accuracy {100 * metrics['val_accuracy']:.2f}%",
              flush=True)

    try:
        result = train(config, checkpoint=args.checkpoint, callback=report)
    except TrainingDiverged as exc:
        print(f"pann train: training diverged: {exc}", file=sys.stderr)
        sys.exit(1)
    save_weights(result.model, out, config=dataclasses.asdict(config), history=result.history)
    print(f"weights written to {out}")


def cmd_fhe_check(args: argparse.Namespace) -> None:
    from pann.fhe_cli import fhe_check

    fhe_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pann", description="Polynomial approximations of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    approx = sub.add_parser("approx", help="table of ReLU approximations: degrees, precision, FHE cost")
    approx.add_argument("--alphas", default="4-14", help=f"target precisions in bits ({MIN_ALPHA:g}..{MAX_ALPHA:g}), "
                        "e.g. 4-14 or 7,9 (default 4-14)")
    approx.add_argument("--degrees", help="one degree set instead of a search, e.g. 15,15")
    approx.add_argument("--family", choices=FAMILIES, default="composite")
    approx.add_argument("--json", action="store_true", help="machine-readable output with coefficients")
    approx.set_defaults(run=cmd_approx)

    ev = sub.add_parser("evaluate", help="backbone and PANN accuracy over a range of precisions")
    ev.add_argument("--model", required=True, help="resnet20/32/44/56/110, vgg11_bn..vgg19_bn, or a torchvision name")
    ev.add_argument("--weights", help="state dict or pann checkpoint (default: untrained)")
    ev.add_argument("--dataset", choices=("cifar10", "cifar100", "synthetic"), default="cifar10")
    ev.add_argument("--data-dir", help="data root (default: $PANN_DATA_DIR, else ./data)")
    ev.add_argument("--alphas", default="4-14", help="precisions in bits, e.g. 4-14 (default)")
    ev.add_argument("--interval", choices=("global", "layer"), default="layer",
                    help="one B for all layers, or one per layer (default)")
    ev.add_argument("--margin", type=_positive(float), default=1.0, help="B = margin x observed max |x| (default 1)")
    ev.add_argument("--calibration-size", type=_positive(int), default=10000,
                    help="training images used to calibrate B (default 10000)")
    ev.add_argument("--limit", type=_positive(int), help="evaluate only the first N test images")
    ev.add_argument("--batch-size", type=_positive(int), default=500)
    ev.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(run=cmd_evaluate)

    tr = sub.add_parser("train", help="train or fine-tune a backbone from a YAML config (see configs/)")
    tr.add_argument("config", help="YAML file with the fields of pann.training.TrainConfig")
    tr.add_argument("--out", type=Path, required=True, help="where to write the trained weights (.pt)")
    tr.add_argument("--checkpoint", type=Path, help="checkpoint file: saved every epoch, resumed from if present")
    tr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tr.set_defaults(run=cmd_train)

    fc = sub.add_parser("fhe-check", help="run a PANN under CKKS encryption (Orion) and compare with plaintext")
    fc.add_argument("--model", required=True, help="resnet20/32/44/56/110 or another convertible model")
    fc.add_argument("--weights", help="state dict or pann checkpoint (default: untrained)")
    fc.add_argument("--alpha", type=float, required=True, help="precision of the composite ReLU in bits")
    fc.add_argument("--images", type=_positive(int), default=1, help="test images to encrypt (default 1)")
    fc.add_argument("--params", default="leveled-128",
                    help="preset (bootstrap-128, leveled-128, insecure-test) or a YAML file (default leveled-128)")
    fc.add_argument("--dataset", choices=("cifar10", "cifar100", "synthetic"), default="cifar10")
    fc.add_argument("--data-dir", help="data root (default: $PANN_DATA_DIR, else ./data)")
    fc.add_argument("--margin", type=_positive(float), default=1.2, help="B = margin x observed max |x| (default 1.2)")
    fc.add_argument("--calibration-size", type=_positive(int), default=2000, help="training images for B (default 2000)")
    fc.add_argument("--fit-images", type=_positive(int), default=64,
                    help="training images for Orion's bootstrap ranges (default 64)")
    fc.add_argument("--workdir", help="folder for keys and diagonals on disk (default: the system temp folder)")
    fc.add_argument("--json", action="store_true", help="machine-readable output")
    fc.add_argument("--dry-run", action="store_true",
                    help="no encryption: depth, bootstrapping, memory estimate, Orion's cleartext error")
    fc.set_defaults(run=cmd_fhe_check)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; bad input or an unreachable resource exits 2 with its message."""
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as exc:  # bad input: the message, no traceback
        print(f"pann {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
