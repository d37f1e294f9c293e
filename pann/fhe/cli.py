"""``pann fhe-check``: a PANN from the command line's model, weights and alpha, checked under CKKS."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from collections.abc import Callable, Iterator

from pann.approximation.catalog import check_alpha, relu_for_precision
from pann.fhe.params import available_memory_gib, go_memory_limit, load_params
from pann.fhe.reference import first_off, seconds_by_kind


def _fhe_pann(args: argparse.Namespace):
    """``(pann, test images, calibration images)`` from --model/--weights and --alpha or --spec."""
    from pann.conversion import spec as pann_spec
    from pann.conversion.flow import convert, prepare
    from pann.data import NUM_CLASSES, calibration_images, load_dataset
    from pann.evaluate import calibrated
    from pann.models.builders import build_model

    from pann.console import weights_file

    model = build_model(args.model, NUM_CLASSES[args.dataset], weights=weights_file(args))
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    calibration = calibration_images(train, args.calibration_size)
    if args.spec:
        pann = pann_spec.apply(prepare(model), pann_spec.load(args.spec), compiled=False)
    else:
        pann = convert(calibrated(model, calibration), relu_for_precision(check_alpha(args.alpha)), "layer",
                       args.margin, compiled=False)
    images = next(test.subset(slice(0, args.images)).batches(args.images))[0]
    return pann, images, next(calibration.batches(args.fit_images))[0]


GO_SETTINGS = ("GOGC", "GOMEMLIMIT")


def restart_with_environment(settings: dict[str, str]) -> None:
    """Start this program again (``os.execve``: the same PID and arguments) with ``settings`` added where the
    environment does not set them; return where it sets them all (the user's values are kept).

    For what a Go library loaded in-process reads, as Lattigo: Go's runtime reads the environment block the process
    started with, and a variable set later through ``os.environ`` never reaches it
    (docs/measurements/fhe_default_gomemlimit/go_reads_the_starting_environment.txt). Call it from a program's entry
    point only, before it has done anything it would have to undo."""
    missing = {key: value for key, value in settings.items() if key not in os.environ}
    if missing:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})


def restart_with_go_settings(args: argparse.Namespace) -> None:
    """:func:`restart_with_environment` with ``GOGC=20`` and ``GOMEMLIMIT`` for the check ``args`` asks for; nothing
    where the parameters do not load (the check then says why).

    The limit is Go's share of the largest estimate of the parameters (:meth:`Params.estimated_memory_gib` for a
    full ciphertext bootstrapped, :func:`pann.fhe.params.go_memory_limit`), known before any network is built: set
    only through ``os.environ``, a 15 GiB limit never bound and the Go heap grew to 19.3 GiB (docs/results.md, "Go's
    heap limited by the parameters' estimate"). Called from the program's entry point only: a caller in-process (a
    test) never restarts."""
    try:
        params = _params(args)
    except (OSError, ValueError):
        return
    estimate = params.estimated_memory_gib(params.slots if params.bootstraps else None)
    restart_with_environment({"GOGC": "20", "GOMEMLIMIT": go_memory_limit(available_memory_gib(), estimate)})


def go_runtime() -> dict[str, str | None]:
    """``GOGC`` and ``GOMEMLIMIT`` as Go's runtime reads them: from the environment this process started with
    (``/proc/self/environ``; the current environment where that cannot be read)."""
    try:
        block = Path("/proc/self/environ").read_bytes().decode(errors="replace")
        started = dict(entry.split("=", 1) for entry in block.split("\0") if "=" in entry)
    except OSError:
        started = dict(os.environ)
    return {key: started.get(key) for key in GO_SETTINGS}


def _params(args: argparse.Namespace):
    params = load_params(args.params)
    if getattr(args, "diagonals_per_transform", None):
        params = dataclasses.replace(params, diagonals_per_transform=args.diagonals_per_transform)
    if getattr(args, "encode_when_loaded", False):
        params = dataclasses.replace(params, encode_when_loaded=True)
    return params


def fhe_check(args: argparse.Namespace, record: Callable[[dict], None] | None = None) -> None:
    """``pann fhe-check``: build the PANN, check it encrypted, print one row per image. ``record``, if given,
    receives the report (JSON-able: parameters, cost model, compile seconds, peak memory, per-image results)."""
    from pann.fhe import backend as fhe
    from pann.console import progress_line
    from pann.user_input import UsageError

    if not args.model:
        raise UsageError("--model is required with --alpha or --spec")
    params = _params(args)
    problems = params.problems()
    if problems:
        raise UsageError(f"FHE parameters {params.name}: " + "; ".join(problems))
    try:
        fhe.orion_modules()
    except fhe.FheUnavailable as exc:
        raise UsageError(str(exc)) from None
    pann, images, fit_images = _fhe_pann(args)
    predicted = _predicted_bootstraps(pann, params.cost_preset)
    if args.dry_run:
        print(json.dumps({**fhe.dry_run(pann, images, params), "cost_model_bootstraps": predicted,
                          "go_runtime": go_runtime()}, indent=2))
        return
    show = progress_line(every_s=60)  # in place on a terminal; in a log, a line a minute and one per image
    with _sigterm_exits() as exit_if_stopped:
        def progress(p) -> None:
            exit_if_stopped()
            show(p.line(), final=p.stage == "image" and p.step == p.steps)

        check = fhe.check(pann, images, params, calibration=fit_images, workdir=args.workdir, progress=progress,
                          trace=args.trace, batch=args.batch)
    show(None)
    report = {"model": args.model, "weights": str(args.weights or ""), "spec": str(args.spec or ""),
              "alpha": args.alpha, "cost_model": params.cost_preset, "cost_model_bootstraps": predicted,
              "peak_memory_gib": _peak_memory_gib(), "diagonals_per_transform": params.diagonals_per_transform,
              "go_runtime": go_runtime(), **check.to_dict()}
    if record is not None:
        record(report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    _print_results(check, predicted, params.cost_preset)


def _print_results(check, predicted: int, cost_preset: str) -> None:
    print(f"{'image':>5} {'encrypted':>9} {'plaintext':>9} {'max error':>10} {'levels':>6} {'boots':>5} {'seconds':>8}")
    for r in check.results:
        print(f"{r.index:>5} {r.encrypted_class:>9} {r.plaintext_class:>9} {r.max_logit_error:>10.3g} "
              f"{r.levels:>6} {r.bootstraps:>5} {r.seconds:>8.1f}")
    print(f"{sum(r.agrees for r in check.results)}/{len(check.results)} agree with the plaintext PANN under "
          f"{check.params}" + ("" if check.secure else " (INSECURE test parameters)")
          + f"; compiled in {check.compile_seconds:.1f} s, peak memory {_peak_memory_gib():.1f} GiB")
    for r in check.results:
        if r.trace:
            off = first_off(r.trace)
            print(f"image {r.index}: " + ("every layer within 1% of its largest value in the clear" if off is None else
                  f"first layer off: {off['layer']} (error {off['max_error']:.3g} where values reach "
                  f"{off['max_abs']:.3g}; level {off['level']}, after {off['bootstraps']} bootstraps)"))
    if check.work_folder:
        print(f"work folder: {check.work_folder['gb']:.1f} GB of keys and diagonals once compiled (estimated "
              f"{check.work_folder['estimated_gb']:.1f} GB before the first key), removed")
    per_image = sum(r.seconds for r in check.results) / len(check.results)
    print(f"{per_image:.1f} s per image; 100 images would take about {check.compile_seconds + 100 * per_image:.0f} s "
          f"(one compilation, then the images in batches of {check.batch})")
    spent = seconds_by_kind([row for r in check.results for row in r.layers])
    print("where an image's time went (mean): " + ", ".join(
        f"{kind} {seconds / len(check.results):.1f} s" for kind, seconds in spent.items()))
    print(f"cost model (preset {cost_preset}) predicts {predicted} bootstraps per image for this PANN; "
          + (f"{check.prescales_kept} ReLU(s) kept their 1/B (input not a linear layer's alone, e.g. after a "
             "residual add), the others have it folded into the layer before" if check.prescales_kept
             else "every ReLU has its 1/B folded into the layer before"))


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[Callable[[], None]]:
    """While the check runs, SIGTERM ends it as an exception would (exit status 143), so that its work folder, tens
    of GB of keys and diagonals, is removed on the way out (the signal is handled once Lattigo's current call returns).

    Yields a function to call at each progress step: it raises the exit again where the first one was dropped
    (Python prints and drops an exception raised while it runs an object's ``__del__``, where Orion frees its
    ciphertexts)."""
    stopped: list[int] = []

    def stop(signum: int, frame) -> None:
        stopped.append(signum)
        sys.exit(128 + signum)

    def exit_if_stopped() -> None:
        if stopped:
            sys.exit(128 + stopped[0])

    if threading.current_thread() is not threading.main_thread():
        yield exit_if_stopped
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield exit_if_stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


def _peak_memory_gib() -> float:
    """This process's peak resident memory (Lattigo's Go heap included: it runs in-process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _predicted_bootstraps(pann, cost_preset: str) -> int:
    """Our cost model's bootstrap count for the PANN under the FHE preset's cost preset, beside what Orion does."""
    from pann.cost.preset import load_preset
    from pann.cost.network import network_cost

    return network_cost(pann, load_preset(cost_preset)).bootstraps
