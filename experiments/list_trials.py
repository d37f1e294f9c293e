"""The finished trials of one search, from Ray Tune's run folder (useful when a search was stopped before its answer).

    python experiments/list_trials.py RUN_DIR [--target 0.9073]

RUN_DIR is the search's Tune folder (``storage/NAME``). One line per trial, in the order the trials started:
mean alpha, validation accuracy (``*`` when it meets ``--target``), bootstraps, levels, polynomial levels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--target", type=float, default=0.9073)
    args = parser.parse_args()
    rows = []
    for folder in args.run_dir.glob("run_trial_*"):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
        last = json.loads(lines[-1]) if lines else {}
        if last.get("final"):
            rows.append((folder.name.rsplit("_", 2)[-2:], last))
    print("trial  mean alpha  validation  bootstraps  levels  polynomial levels")
    for i, (_, r) in enumerate(sorted(rows, key=lambda row: row[0])):
        mark = "*" if r["accuracy"] >= args.target else " "
        print(f"{i:5d}  {r['precision_bits']:10.2f}  {100 * r['accuracy']:9.2f}%{mark} {r['bootstraps']:10.0f}  "
              f"{r['levels']:6.0f}  {r['polynomial_levels']:17.0f}")


if __name__ == "__main__":
    main()
