"""The ``pann`` command line: one short function per command, and the parser that declares their options.

Longer than the ~250-line guide because every command's options are declared here, in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pann.approximation.composite import FAMILIES, ReluApproximation
from pann.approximation.catalog import MAX_ALPHA, MIN_ALPHA, get_approximation, relu_for_precision
from pann.files import read_yaml
from pann.console import weights_file
from pann.user_input import UsageError, parse_alphas, parse_degrees

__all__ = ["UsageError", "build_parser", "main", "parse_alphas", "parse_degrees", "run"]


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
        approximations = [relu_for_precision(alpha, workers=os.cpu_count() or 1) for alpha in targets]
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


def _device(requested: str | None) -> str:
    """``--device`` checked before any work: a device torch knows, and CUDA only where it is available."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device {requested!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return requested


def _evaluate_spec(args: argparse.Namespace, device: str) -> None:
    """Accuracy of the PANN a spec file describes, on the test images."""
    from pann.conversion import spec as pann_spec
    from pann.conversion.flow import prepare
    from pann.data import NUM_CLASSES, load_dataset
    from pann.evaluate import accuracy
    from pann.models.builders import build_model

    spec = pann_spec.load(args.spec)
    model = build_model(args.model, NUM_CLASSES[args.dataset], weights=weights_file(args))
    pann = pann_spec.apply(prepare(model), spec)
    test = load_dataset(args.dataset, "test", args.data_dir)
    test = test.subset(slice(args.skip, args.skip + args.limit if args.limit else None))
    backbone_accuracy = accuracy(model, test, args.batch_size, device, None if args.json else "backbone")
    pann_accuracy = accuracy(pann, test, args.batch_size, device, None if args.json else "PANN")
    alphas = [layer.approximation.precision for layer in spec.layers]
    if args.json:
        json.dump({"spec": str(args.spec), "test_images": len(test), "backbone_accuracy": backbone_accuracy,
                   "accuracy": pann_accuracy, "layers": len(spec.layers),
                   "mean_precision": sum(alphas) / len(alphas)}, sys.stdout, indent=2)
        print()
        return
    print(f"{args.model} on {args.dataset}: {len(test)} test images (from image {args.skip})")
    print(f"backbone {100 * backbone_accuracy:.2f}%, PANN of {args.spec} ({len(spec.layers)} layers, precision "
          f"{min(alphas):.2f}..{max(alphas):.2f}) {100 * pann_accuracy:.2f}%")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    device = _device(args.device)
    if args.spec:
        return _evaluate_spec(args, device)

    from pann.conversion.flow import interval_bounds
    from pann.data import NUM_CLASSES, calibration_images, load_dataset
    from pann.evaluate import accuracy, accuracy_curve, calibrated
    from pann.models.builders import build_model

    alphas = parse_alphas(args.alphas)
    model = build_model(args.model, NUM_CLASSES[args.dataset], weights=weights_file(args))
    test = load_dataset(args.dataset, "test", args.data_dir)
    train = load_dataset(args.dataset, "train", args.data_dir)
    if args.limit:
        test = test.subset(slice(0, args.limit))
    calibration = calibration_images(train, args.calibration_size)
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


def cmd_cost(args: argparse.Namespace) -> None:
    from pann.conversion.flow import prepare
    from pann.cost.preset import load_preset
    from pann.models.builders import build_model
    from pann.cost.network import network_cost

    preset = load_preset(args.preset)
    graph = prepare(build_model(args.model))
    if args.spec:
        from pann.conversion import spec as pann_spec
        approximations = pann_spec.load(args.spec).approximations
        precisions = [a.precision for a in approximations.values()]
        label = f"spec {sum(precisions) / len(precisions):.2f}"  # the spec's mean precision
        configurations = [(label, approximations)]
    else:
        configurations = [(f"{alpha:g}", relu_for_precision(alpha)) for alpha in parse_alphas(args.alphas)]
    rows = [{"alpha": label, "degrees": list(approx.degrees) if hasattr(approx, "degrees") else "per layer",
             **network_cost(graph, preset, approximations=approx).to_dict()} for label, approx in configurations]
    if args.json:
        json.dump({"model": args.model, "preset": preset.name, "rows": rows}, sys.stdout, indent=2)
        print()
        return
    print(f"{args.model} under cost preset {preset.name}: {preset.description}")
    print(f"{'alpha':>5}  {'degrees':<12} {'bootstraps':>10} {'levels':>7} {'poly levels':>11} {'mults':>6} "
          f"{'est. latency':>12}")
    for r in rows:
        degrees = r["degrees"] if isinstance(r["degrees"], str) else ",".join(map(str, r["degrees"]))
        print(f"{r['alpha']:>5}  {degrees:<12} {r['bootstraps']:>10} {r['levels']:>7} "
              f"{r['polynomial_levels']:>11} {r['multiplications']:>6} {r['latency']:>11.0f}s")
    print(f"est. latency: seconds per image estimated from the time table of preset {preset.name} "
          "(its 'source' field says where the numbers come from)")


def cmd_weights(args: argparse.Namespace) -> None:
    from pann.data import default_data_dir
    from pann.models.weights import SOURCE_URL, WEIGHTS, cached

    data_dir = args.data_dir or default_data_dir()
    print(f"{'name':<17} {'model':<9} {'accuracy':>8}  {'cached':<6} licence")
    for w in WEIGHTS.values():
        print(f"{w.name:<17} {w.model:<9} {w.accuracy:7.2f}%  {'yes' if cached(w.name, data_dir) else 'no':<6} "
              f"{w.licence}")
    print(f"accuracy: CIFAR-10 top-1 as the source records it (best_prec1); source {SOURCE_URL}; cached: in "
          f"{data_dir} or the torch hub cache, else downloaded on first use (mirror: $PANN_WEIGHTS_URL)")


def cmd_train(args: argparse.Namespace) -> None:
    from pann.files import check_writable
    from pann.models.builders import save_weights
    from pann.training.trainer import CheckpointError, TrainConfig, TrainingDiverged, train

    fields = read_yaml(args.config)
    if not fields:  # every default would start a 3-epoch training on the whole training set
        raise UsageError(f"{args.config} is empty: give the fields of pann.training.TrainConfig to train with "
                         "(at least model, dataset and epochs; configs/finetune_resnet20_cpu.yaml is an example)")
    config = TrainConfig.from_dict(fields)
    out = args.out
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    check_writable(out, "--out")  # now, not after the last epoch
    if args.checkpoint:
        check_writable(args.checkpoint, "--checkpoint")

    def report(epoch: int, metrics: dict) -> None:
        print(f"epoch {epoch}/{config.epochs}: train loss {metrics['train_loss']:.4f}, "
              f"validation loss {metrics['val_loss']:.4f}, validation accuracy {100 * metrics['val_accuracy']:.2f}%",
              flush=True)

    try:
        result = train(config, checkpoint=args.checkpoint, callback=report)
    except CheckpointError as exc:
        raise UsageError(f"{exc} (config {args.config})") from None
    except TrainingDiverged as exc:
        print(f"pann train: training diverged: {exc}", file=sys.stderr)
        sys.exit(1)
    save_weights(result.model, out, config=dataclasses.asdict(config), history=result.history)
    print(f"weights written to {out}")


def cmd_fhe_check(args: argparse.Namespace) -> None:
    from pann.fhe.cli import fhe_check

    if args.run_id:
        raise UsageError("--run-id reads the search's MLflow records: run it with the `pann` command "
                         "(python -m search.cli), not python -m pann.cli")
    fhe_check(args)


def _model_source(command: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The options that name a model, its weights and its data, shared by the commands that build one."""
    command.add_argument("--model", required=model_required,
                         help="resnet20/32/44/56/110, vgg11_bn..vgg19_bn, or a torchvision name")
    command.add_argument("--weights", help="state dict, pann checkpoint or a name from `pann weights` "
                         "(default: untrained)")
    command.add_argument("--dataset", choices=("cifar10", "cifar100", "synthetic"), default="cifar10")
    command.add_argument("--data-dir", help="data root (default: $PANN_DATA_DIR, else ./data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pann", description="Polynomial approximations of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_numerical_commands(sub)
    _add_fhe_check(sub)
    add_verbose(sub)
    return parser


def _add_numerical_commands(sub) -> None:
    approx = sub.add_parser("approx", help="table of ReLU approximations: degrees, precision, FHE cost")
    approx.add_argument("--alphas", default="4-14", help=f"target precisions in bits ({MIN_ALPHA:g}..{MAX_ALPHA:g}), "
                        "e.g. 4-14 or 7,9 (default 4-14)")
    approx.add_argument("--degrees", help="one degree set instead of a search, e.g. 15,15")
    approx.add_argument("--family", choices=FAMILIES, default="composite")
    approx.add_argument("--json", action="store_true", help="machine-readable output with coefficients")
    approx.set_defaults(run=cmd_approx)

    ev = sub.add_parser("evaluate", help="backbone and PANN accuracy over a range of precisions")
    _model_source(ev)
    ev.add_argument("--alphas", default="4-14", help="precisions in bits, e.g. 4-14 (default)")
    ev.add_argument("--interval", choices=("global", "layer"), default="layer",
                    help="one B for all layers, or one per layer (default)")
    ev.add_argument("--margin", type=_positive(float), default=1.0, help="B = margin x observed max |x| (default 1)")
    ev.add_argument("--calibration-size", type=_positive(int), default=10000,
                    help="training images used to calibrate B (default 10000)")
    ev.add_argument("--spec", type=Path, help="evaluate the PANN of this spec file (per-layer B and polynomials) "
                    "instead of a curve over --alphas")
    ev.add_argument("--limit", type=_positive(int), help="evaluate only the first N test images")
    ev.add_argument("--skip", type=int, default=0, help="with --spec: skip the first N test images (e.g. those "
                    "a search validated and confirmed on)")
    ev.add_argument("--batch-size", type=_positive(int), default=500)
    ev.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(run=cmd_evaluate)

    co = sub.add_parser("cost", help="CKKS cost of a network: bootstraps, levels, multiplications, latency")
    co.add_argument("--model", required=True, help="resnet20/32/44/56/110, vgg11_bn..vgg19_bn, or a torchvision name")
    co.add_argument("--alphas", default="4-14", help="one uniform ReLU precision per row, e.g. 4-14 (default)")
    co.add_argument("--spec", type=Path, help="cost the per-layer PANN of this spec file instead of --alphas")
    co.add_argument("--preset", default="mpcnn",
                    help="built-in cost preset (mpcnn, orion-resnet, orion-resnet-deep) or a YAML file")
    co.add_argument("--json", action="store_true", help="machine-readable output with the bootstrap sites")
    co.set_defaults(run=cmd_cost)

    we = sub.add_parser("weights", help="named pretrained weights: accuracy, licence, whether cached")
    we.add_argument("--data-dir", help="data folder with converted weights (default: $PANN_DATA_DIR, else ./data)")
    we.set_defaults(run=cmd_weights)

    tr = sub.add_parser("train", help="train or fine-tune a backbone from a YAML config (see configs/)")
    tr.add_argument("config", help="YAML file with the fields of pann.training.TrainConfig")
    tr.add_argument("--out", type=Path, required=True, help="where to write the trained weights (.pt)")
    tr.add_argument("--checkpoint", type=Path, help="checkpoint file: saved every epoch, resumed from if present")
    tr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tr.set_defaults(run=cmd_train)


def _add_fhe_check(sub) -> None:
    fc = sub.add_parser("fhe-check", help="run a PANN under CKKS encryption (Orion) and compare with plaintext")
    _model_source(fc, model_required=False)
    source = fc.add_mutually_exclusive_group(required=True)
    source.add_argument("--alpha", type=float, help="one precision for every ReLU, in bits (per-layer B calibrated)")
    source.add_argument("--spec", type=Path, help="a PANN spec file (per-layer B and polynomials, e.g. a search's "
                        "answer_spec.json)")
    source.add_argument("--run-id", help="a search's MLflow parent run: check its answer (answer_spec.json, model, "
                        "backbone weights from the run) and record the results under that run")
    fc.add_argument("--tracking-uri", help="with --run-id: the MLflow store (default: ./mlflow.db)")
    fc.add_argument("--images", type=_positive(int), default=1, help="test images to encrypt (default 1)")
    fc.add_argument("--batch", type=_positive(int), default=4,
                    help="images run beside each other, layer by layer, each linear layer's keys and diagonals "
                         "loaded once for them all: less time per image, a few ciphertexts more memory (default 4)")
    fc.add_argument("--params", default="leveled-128",
                    help="preset (leveled-128, bootstrap-128, bootstrap-128-deep: 12 levels between bootstraps, "
                         "insecure-test) or a YAML file (default leveled-128)")
    fc.add_argument("--margin", type=_positive(float), default=1.2, help="B = margin x observed max |x| (default 1.2)")
    fc.add_argument("--calibration-size", type=_positive(int), default=2000, help="training images for B (default 2000)")
    fc.add_argument("--fit-images", type=_positive(int), default=64,
                    help="training images for Orion's bootstrap ranges (default 64)")
    fc.add_argument("--workdir", help="folder for keys and diagonals on disk (default: the system temp folder)")
    fc.add_argument("--diagonals-per-transform", type=_positive(int),
                    help="split each linear layer's blocks into transforms of at most N diagonals, one in memory at "
                         "a time: less memory, more time (default: the preset's; docs/fhe.md)")
    fc.add_argument("--encode-when-loaded", action="store_true",
                    help="with --diagonals-per-transform and a preset that saves keys and diagonals: save the "
                         "diagonals' values, not their encodings, and encode each part's when it runs: ResNet-20's "
                         "work folder a third of the size or less, more time per image (docs/fhe.md)")
    fc.add_argument("--json", action="store_true", help="machine-readable output")
    fc.add_argument("--dry-run", action="store_true",
                    help="no encryption: depth, bootstrapping, memory estimate, Orion's cleartext error")
    fc.add_argument("--trace", action="store_true",
                    help="also decrypt every layer's output and compare it with the network run in the clear "
                         "(the first layer off is printed; every layer's error is in --json)")
    fc.set_defaults(run=cmd_fhe_check)


_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_OUR_LOGGERS = ("pann", "search", "tracking")


def add_verbose(sub) -> None:
    """Give every command of ``sub`` (an argparse subparsers action) a ``--verbose`` switch."""
    for command in sub.choices.values():
        if not any("--verbose" in a.option_strings for a in command._actions):
            command.add_argument("--verbose", action="store_true",
                                 help="also show the libraries' notices, tables and progress bars")


def _configure_logging(verbose: bool = False) -> None:
    """INFO and above of this project's loggers to stderr, in a plain format; the other libraries' WARNING and
    above (INFO too with ``verbose``)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=_LOG_FORMAT, stream=sys.stderr)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
        quiet_libraries: Callable[[], None] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; bad input or an unreachable resource exits 2 with its message.

    Logging is configured here, the program's entry point, never by library code; without ``--verbose``,
    ``quiet_libraries`` (if given) silences the notices of the libraries the commands use.
    """
    args = parser.parse_args(argv)
    if argv is None and args.command == "fhe-check":  # the program itself, not a caller in-process
        from pann.fhe.cli import restart_with_go_settings
        restart_with_go_settings(args)  # Lattigo's Go runtime reads the environment the process started with
    _configure_logging(getattr(args, "verbose", False))
    if quiet_libraries is not None and not getattr(args, "verbose", False):
        quiet_libraries()
    return exit_code(args.command, lambda: args.run(args))


def exit_code(command: str, work: Callable[[], object]) -> int:
    """Run ``work`` and say how it ended: 0; bad input or an unreachable resource, 2 with its one-line message;
    an interrupt, 130 with what it says (a search says how far it got)."""
    try:
        work()
    except (ValueError, OSError) as exc:  # bad input: the message, no traceback
        print(f"pann {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or a search that stopped before its trials did
        print(f"pann {command}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
