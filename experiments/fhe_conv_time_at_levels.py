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

_ORION_LEVEL = re.compile(r"layers_(\S+?) @ level=(\d+)")


def interpolate(points: dict[int, float], level: int) -> float:
    """The benchmark's seconds at ``level``: linear between the measured levels, the nearest end outside them."""
    levels = sorted(points)
    if level <= levels[0]:
        return points[levels[0]]
    for low, high in zip(levels, levels[1:]):
        if level <= high:
            return points[low] + (points[high] - points[low]) * (level - low) / (high - low)
    return points[levels[-1]]


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
    rows = [row for row in report["results"][0]["layers"] if row["kind"] == "conv2d"]
    missing = [row["layer"] for row in rows if row["layer"] not in placed]
    if missing:
        print(f"fhe_conv_time_at_levels: no level for {', '.join(missing)} (--default-level NAME=LEVEL)",
              file=sys.stderr)
        return 2
    measured = estimated = 0.0
    for index, row in enumerate(report["results"][0]["layers"]):
        if row["kind"] != "conv2d":
            continue
        ran_at = report["input_level"] if index == 0 else 2 if row["bootstraps"] else row["level"] + 1
        measured += row["seconds"]
        estimated += row["seconds"] * interpolate(points, placed[row["layer"]]) / interpolate(points, ran_at)
    print(f"convolutions: {measured:.1f} s measured, {estimated:.1f} s at the other levels "
          f"({estimated / measured:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
