"""Estimate a network's convolution time at other levels of the modulus chain from measured parts (not a run).

    python experiments/fhe_conv_time_at_levels.py --report UNIFORM.json --levels PLACEMENT.log \
        --benchmark CONV_LEVEL_A.json --benchmark CONV_LEVEL_B.json ... [--default-level NAME=LEVEL ...]

``--report``: a `pann fhe-check --json` report whose image rows time every convolution where it ran; the level it ran
at is its output's plus one, or, for a convolution whose output was bootstrapped, the bottom of the chain (level 2,
Orion bootstraps a convolution's output at level 1), or the report's input level for the first layer.
``--levels``: the log of a check with ``pann.fhe``'s debug log on, whose Orion lines ``layers_NAME @ level=L`` say at
which level another network's convolutions run; ``--default-level`` gives those the log does not reach.
``--benchmark``: `benchmarks/fhe_linear_by_level.py` rows (one convolution's seconds at some levels): each
convolution's measured time is scaled by the benchmark's time at the new level over its time at the old, linearly
interpolated between the levels measured. Prints both totals and their ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

_ORION_LEVEL = re.compile(r"layers_(\S+?) @ level=(\d+)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--levels", type=Path, required=True)
    parser.add_argument("--benchmark", type=Path, action="append", required=True)
    parser.add_argument("--default-level", action="append", default=[], metavar="NAME=LEVEL")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    points = {row["level"]: row["median_s"] for path in args.benchmark for row in json.loads(path.read_text())}
    placed = {name: int(level) for name, level in _ORION_LEVEL.findall(args.levels.read_text())}
    for item in args.default_level:
        name, _, level = item.partition("=")
        placed.setdefault(name, int(level))
    convolutions = [(index, row) for index, row in enumerate(report["results"][0]["layers"]) if row["kind"] == "conv2d"]
    missing = [row["layer"] for _, row in convolutions if row["layer"] not in placed]
    if missing:
        print(f"fhe_conv_time_at_levels: no level for {', '.join(missing)} (--default-level NAME=LEVEL)",
              file=sys.stderr)
        return 2
    levels = sorted(points)

    def benchmark_seconds(level: int) -> float:  # linear between the measured levels, the nearest end outside them
        return float(np.interp(level, levels, [points[v] for v in levels]))

    measured = estimated = 0.0
    for index, row in convolutions:
        ran_at = report["input_level"] if index == 0 else 2 if row["bootstraps"] else row["level"] + 1
        measured += row["seconds"]
        estimated += row["seconds"] * benchmark_seconds(placed[row["layer"]]) / benchmark_seconds(ran_at)
    print(f"convolutions: {measured:.1f} s measured, {estimated:.1f} s at the other levels "
          f"({estimated / measured:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
