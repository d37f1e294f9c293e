"""Where Orion places a network's bootstraps, and where it would with its latency weights scaled: no keys made.

    PANN_DATA_DIR=../shared/data python experiments/fhe_placement_probe.py (--run-id RUN | --alpha 8) \
        [--params bootstrap-128] [--diagonals-per-transform 32] [--linear-scale 3.7] [--bootstrap-seconds 13.4] [--json OUT]

Orion 1.0.2 places bootstraps by a shortest path over levels (``orion/core/level_dag.py``): a linear layer at level
``l`` weighs ``0.001 x diagonals x l`` per block, a bootstrap ``3.41 e^(0.18 L) + 4.81`` per ciphertext (``L``: the
preset's levels). ``--linear-scale`` multiplies the first, ``--bootstrap-seconds`` replaces the second; without them
Orion's own weights are used. The check (``pann.fhe.backend.check``, the search's answer of ``--run-id`` as ``pann
fhe-check --run-id`` builds it, or with ``--alpha`` the uniform ResNet-20 of the named weights ``resnet20_cifar10``)
runs to the placement and the work folder's estimate, then stops before any key is made (its work folder removed);
printed: the bootstraps, the input level, each linear layer's level and diagonals, and the work folder's estimated
size (with ``io_mode: save``; where it exceeds the free disk the check refuses, and that is printed). With ``--images N`` the check
runs on (N test images, in batches of ``--batch``), and ``--json`` gets its report as ``pann fhe-check --json``'s
results, with the peak resident memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import sys


class _Placed(Exception):
    """Raised once Orion has placed the bootstraps: the check stops there."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    network = p.add_mutually_exclusive_group(required=True)
    network.add_argument("--run-id", help="a search's MLflow parent run (its answer)")
    network.add_argument("--alpha", type=float, help="the uniform ResNet-20 (weights resnet20_cifar10) at this alpha")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--params", default="bootstrap-128")
    p.add_argument("--linear-scale", type=float, help="multiply Orion's linear-layer weight by this")
    p.add_argument("--bootstrap-seconds", type=float, help="a bootstrap's weight per ciphertext (Orion's: formula)")
    p.add_argument("--json", help="write the placement (with --images: the report) here too")
    p.add_argument("--images", type=int, help="run the check on this many test images")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--diagonals-per-transform", type=int)
    args = p.parse_args()

    from orion.core import auto_bootstrap, level_dag

    from pann.fhe import backend as fhe
    from pann.fhe.params import load_params

    _weights(level_dag.LevelDAG, args.linear_scale, args.bootstrap_seconds)
    placed = {}
    solve = auto_bootstrap.BootstrapSolver.solve

    def solve_and_stop(self):
        input_level, bootstraps, slots = solve(self)
        linear = {node.split("@")[0]: int(node.split("=")[-1]) for node in self.shortest_path}
        modules = {n: self.network_dag.nodes[n]["module"] for n in self.network_dag.nodes}
        placed.update(bootstraps=bootstraps, input_level=input_level, layers=[
            {"layer": name, "level": level, "diagonals": sum(len(d) for d in modules[name].diagonals.values())}
            for name, level in linear.items() if getattr(modules.get(name), "diagonals", None)])
        return input_level, bootstraps, slots

    refuse = fhe.refuse_unless_room

    def estimate_and_stop(size, folder):
        placed.update(work_folder_estimated_gb=round(size.gb, 4), rotation_keys=size.keys, diagonals=size.diagonals)
        try:
            refuse(size, folder)
        except OSError as exc:
            placed.update(refused=str(exc))
            raise _Placed from None
        if not args.images:
            raise _Placed

    auto_bootstrap.BootstrapSolver.solve = solve_and_stop
    fhe.refuse_unless_room = estimate_and_stop
    pann, images, fit_images = _answer(args, args.images or 1)
    params = load_params(args.params)
    if args.diagonals_per_transform:
        params = dataclasses.replace(params, diagonals_per_transform=args.diagonals_per_transform)
    try:
        report = fhe.check(pann, images, params, calibration=fit_images, batch=args.batch)
    except _Placed:
        report = None
    if report is not None:
        placed.update(report.to_dict(), peak_memory_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        for r in report.results:
            print(f"image {r.index}: agrees {r.agrees}, max logit error {r.max_logit_error:.2g}, "
                  f"{r.bootstraps} bootstraps, {r.seconds:.1f} s")
    print(f"{placed['bootstraps']} bootstraps, input at level {placed['input_level']}")
    for row in placed["layers"]:
        print(f"  {row['layer']:40s} level {row['level']:3d}  {row['diagonals']:5d} diagonals")
    if "work_folder_estimated_gb" in placed:
        print(f"work folder: about {placed['work_folder_estimated_gb']:.1f} GB ({placed['rotation_keys']} rotation "
              f"keys, {placed['diagonals']} diagonals)" + (f"; refused: {placed['refused']}" if "refused" in placed else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), **placed}, f, indent=2)
    return 0


def _weights(dag: type, linear_scale: float | None, bootstrap_seconds: float | None) -> None:
    """Scale Orion's linear-layer weight and replace its bootstrap weight (infinite weights stay infinite)."""
    layer, boot = dag.estimate_layer_latency, dag.estimate_bootstrap_latency
    if linear_scale is not None:
        dag.estimate_layer_latency = lambda self, module, level: layer(self, module, level) * linear_scale
    if bootstrap_seconds is not None:
        def bootstrap(self, prev_node, curr_node):
            weight, count = boot(self, prev_node, curr_node)
            return (weight if math.isinf(weight) or count == 0 else bootstrap_seconds * count), count
        dag.estimate_bootstrap_latency = bootstrap


def _answer(args, images: int):
    """The answer's PANN (or the uniform network's), ``images`` test images and the fit images, as ``pann fhe-check``
    builds them."""
    import tempfile

    from mlflow import MlflowClient

    from pann.fhe.cli import _fhe_pann
    from tracking.checks import answer_source

    if args.alpha is not None:
        return _fhe_pann(argparse.Namespace(model="resnet20", weights="resnet20_cifar10", dataset="cifar10",
                                            data_dir=None, spec=None, alpha=args.alpha, margin=1.2,
                                            calibration_size=2000, images=images, fit_images=64))

    with tempfile.TemporaryDirectory(prefix="pann-probe-") as folder:
        source = answer_source(MlflowClient(args.tracking_uri), args.run_id, folder)
        ns = argparse.Namespace(model=source.model, weights=source.weights or None, dataset=source.dataset,
                                data_dir=None, spec=source.spec, alpha=None, margin=1.2, calibration_size=2000,
                                images=images, fit_images=64)
        return _fhe_pann(ns)


if __name__ == "__main__":
    sys.exit(main())
