"""The finished trials of one search, from Ray Tune's run folder (useful when a search was stopped before its answer).

    python experiments/list_trials.py RUN_DIR [--target 0.9073] [--params epochs,distill_weight,...] [--reports]
        [--mean-of N]

RUN_DIR is the search's Tune folder (``storage/NAME``). One line per trial, in the order the trials started:
mean alpha, validation accuracy (``*`` when it meets ``--target``), bootstraps, levels, polynomial levels, and
the sampled value of each dimension named in ``--params``. With ``--reports`` (training searches) every trial,
stopped ones too, by its Optuna number (a walk's by the order Tune created them): the sampled values, then its
PANN's validation accuracy at each report (after each epoch; the last one of a finished trial is its final result),
and how it ended; a population-based trial one line per network it trained (the epoch of each report after the
first network, which it continued from the member it took over). ``--mean-of N`` adds, to each network that ended
its trial, the mean of its last N epoch reports (a final ranking less noisy than one report, read after the fact).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--target", type=float, default=0.9073)
    parser.add_argument("--params", default="", help="comma-separated search dimensions to show")
    parser.add_argument("--reports", action="store_true", help="every trial's reports, stopped trials too")
    parser.add_argument("--mean-of", type=int, default=0, metavar="N",
                        help="with --reports: the mean of each final network's last N epoch reports")
    args = parser.parse_args()
    if args.mean_of < 0:
        parser.error(f"--mean-of: a number of reports, 0 or more (got {args.mean_of})")
    params = [p for p in args.params.split(",") if p]
    if args.reports:
        return _reports(args.run_dir, params, args.mean_of)
    rows = []
    for folder in args.run_dir.glob("run_trial_*"):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
        last = json.loads(lines[-1]) if lines else {}
        if last.get("final"):
            rows.append((folder.name.rsplit("_", 2)[-2:], last))
    print("trial  mean alpha  validation  bootstraps  levels  polynomial levels" + "".join(f"  {p}" for p in params))
    for i, (_, r) in enumerate(sorted(rows, key=lambda row: row[0])):
        mark = "*" if r["accuracy"] >= args.target else " "
        sampled = "".join(f"  {r.get('config', {}).get(p)!s:>{len(p)}}" for p in params)
        print(f"{i:5d}  {r['precision_bits']:10.2f}  {100 * r['accuracy']:9.2f}%{mark} {r['bootstraps']:10.0f}  "
              f"{r['levels']:6.0f}  {r['polynomial_levels']:17.0f}{sampled}")


def _reports(run_dir: Path, params: list[str], mean_of: int = 0) -> None:
    rows = []
    for folder in run_dir.glob("run_trial_*"):
        started = folder / "params.json"  # absent until the trial first starts
        config = json.loads(started.read_text()) if started.is_file() else {}
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
        results = [json.loads(line) for line in lines]
        # Optuna's trial number; else the order Tune created the trials in (run_trial_ID_NNNNN...), counted below
        rows.append((config.get("optuna_trial", int(folder.name.split("_")[3])), config, results))
    if not any("optuna_trial" in config for _, config, _ in rows):
        rows = [(i, config, results) for i, (_, config, results) in enumerate(sorted(rows, key=lambda row: row[0]))]
    print("       trial" + "".join(f"  {p}" for p in params)
          + "   ended  seconds  validation accuracy at each report (%)")
    for number, config, results in sorted(rows, key=lambda row: row[0]):
        segments = _segments(config, results)
        for segment, (point, reports) in enumerate(segments):
            if segment + 1 < len(segments):
                ended = "replaced"  # population-based training: it took over another member's network here
            else:
                final = bool(reports) and bool(reports[-1].get("final"))
                ended = "final" if final else "stopped" if reports else "no report"
            seconds = reports[-1]["time_total_s"] if reports else 0
            curve = " ".join(f"{'e' + str(r['epoch']) + ' ' if 'epoch' in r and segment else ''}"
                             f"{100 * r['accuracy']:.2f}" for r in reports)
            epochs = [r["accuracy"] for r in reports if "epoch" in r][-mean_of:] if mean_of else []
            mean = f"  (mean of the last {len(epochs)}: {100 * sum(epochs) / len(epochs):.2f})" \
                if ended == "final" and epochs else ""
            print(f"{number:12d}" + "".join(f"  {point.get(p)!s:>{len(p)}}" for p in params)
                  + f"  {ended:>8}  {seconds:7.0f}  {curve}{mean}")


def _segments(config: dict, results: list[dict]) -> list[tuple[dict, list[dict]]]:
    """A trial's reports in runs of one point: one run, unless population-based training changed the trial's
    point (a new lineage) between reports; each run with its point."""
    segments: list[tuple[dict, list[dict]]] = []
    for result in results:
        point = result.get("config", config)
        if not segments or segments[-1][0] != point:
            segments.append((point, []))
        segments[-1][1].append(result)
    return segments or [(config, [])]


if __name__ == "__main__":
    main()
