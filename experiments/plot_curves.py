"""Render `pann evaluate --json` reports as one accuracy-vs-precision plot and a markdown table.

    python experiments/plot_curves.py REPORT.json [REPORT.json ...] --out docs/img/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(report: dict) -> str:
    return f"{report['model']} ({report['interval']} B, margin {report['margin']:g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for report in reports:
        line, = ax.plot([p["alpha"] for p in report["curve"]], [100 * p["accuracy"] for p in report["curve"]],
                        marker="o", label=label(report))
        ax.axhline(100 * report["backbone_accuracy"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("precision alpha (ReLU error B 2^-alpha)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("PANN accuracy vs precision (dotted: backbone)")
    ax.grid(alpha=0.3)
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)

    alphas = sorted({p["alpha"] for r in reports for p in r["curve"]})
    print("| alpha | degrees | depth | " + " | ".join(label(r) for r in reports) + " |")
    print("|---|---|---|" + "---|" * len(reports))
    print("| backbone | | | " + " | ".join(f"{100 * r['backbone_accuracy']:.2f}" for r in reports) + " |")
    for alpha in alphas:
        points = [next((p for p in r["curve"] if p["alpha"] == alpha), None) for r in reports]
        first = next(p for p in points if p)
        cells = [f"{100 * p['accuracy']:.2f} ({100 * p['out_of_range']:.4f}% out)" if p else "" for p in points]
        print(f"| {alpha:g} | {','.join(map(str, first['degrees']))} | {first['depth']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
