"""Where encrypted images spent their time, side by side: `pann fhe-check --json` reports in, one table out.

    python experiments/fhe_time_by_layer.py NAME=REPORT.json [NAME=REPORT.json ...] [--by kind|stage|loading|computing]

For each report, the mean seconds per image by layer kind (``bootstrap`` apart; ``pann.fhe.reference.seconds_by_kind``),
by ResNet stage, bootstraps included (a layer named ``...layerN...`` and the unnamed ones after it, such as the
residual adds, are stage N; ``stem`` before the first; pooling, flatten and the classifier are ``head``), or, for a run
with its linear layers in parts (``--diagonals-per-transform``), by what the linear layers did: load rotation keys
(and how many), load diagonals, compute; or each linear layer's computing seconds (its own less its loading; the
same run's rows) by layer; then the bootstraps and seconds per image. Reads only the reports' ``results[*].layers``
rows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pann.fhe.reference import seconds_by_kind


_HEAD = {"adaptive_avgpool", "avgpool", "flatten", "linear"}
_LINEAR = {"conv2d", "linear", "adaptive_avgpool", "avgpool"}  # Orion evaluates these as linear transforms


def _by_stage(rows: list[dict]) -> dict[str, float]:
    spent: dict[str, float] = {}
    stage = "stem"
    for row in rows:
        match = re.search(r"layer(\d+)", row["layer"])
        stage = "head" if row["kind"] in _HEAD else f"layer{match.group(1)}" if match else stage
        spent[stage] = spent.get(stage, 0.0) + row["seconds"] + row["bootstrap_seconds"]
    return spent


def _by_loading(rows: list[dict]) -> dict[str, float]:
    if "key_seconds" not in rows[0]:
        raise ValueError("no loading times in its rows (a run without --diagonals-per-transform, or before they "
                         "were recorded)")
    keys, diagonals = (sum(row[key] for row in rows) for key in ("key_seconds", "diagonal_seconds"))
    linear = sum(row["seconds"] for row in rows if row["kind"] in _LINEAR)
    return {"linear: loading rotation keys": keys, "linear: rotation keys loaded": sum(r["keys_loaded"] for r in rows),
            "linear: loading diagonals": diagonals, "linear: computing": linear - keys - diagonals,
            "bootstrap": sum(row["bootstrap_seconds"] for row in rows),
            "other layers": sum(row["seconds"] for row in rows) - linear}


def _computing(rows: list[dict]) -> dict[str, float]:
    _by_loading(rows)  # the same check: rows with loading times
    return {row["layer"]: row["seconds"] - row["key_seconds"] - row["diagonal_seconds"]
            for row in rows if row["kind"] in _LINEAR}


def table(reports: dict[str, dict], by: str) -> str:
    split = {"kind": seconds_by_kind, "stage": _by_stage, "loading": _by_loading, "computing": _computing}[by]
    columns = {}
    for name, report in reports.items():
        images = report["results"]
        if not images or not images[0].get("layers"):
            raise ValueError(f"{name}: no per-layer rows (a report of pann fhe-check before they were recorded)")
        totals: dict[str, float] = {}
        for image in images:
            for key, seconds in split(list(image["layers"])).items():
                totals[key] = totals.get(key, 0.0) + seconds / len(images)
        totals["bootstraps per image"] = sum(i["bootstraps"] for i in images) / len(images)
        totals["seconds per image"] = sum(i["seconds"] for i in images) / len(images)
        columns[name] = totals
    keys = list(dict.fromkeys(k for totals in columns.values() for k in totals))
    keys = [k for k in keys if not k.endswith("per image")] + ["bootstraps per image", "seconds per image"]
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}} " + " ".join(f"{name:>12}" for name in columns)]
    for key in keys:
        lines.append(f"{key:{width}} " + " ".join(f"{columns[name].get(key, 0.0):12.1f}" for name in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="NAME=REPORT.json (pann fhe-check --json)")
    parser.add_argument("--by", choices=("kind", "stage", "loading", "computing"), default="kind")
    args = parser.parse_args(argv)
    reports = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"expected NAME=REPORT.json with an existing file, got {item!r}")
        reports[name] = json.loads(Path(path).read_text())
    try:
        print(table(reports, args.by))
    except ValueError as exc:
        print(f"fhe_time_by_layer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
