"""Plot `finetune_table.py --json` or `recipe_table.py --json` results: PANN accuracy vs alpha, one line per variant.

    python experiments/plot_table.py docs/measurements/insight2_weight_decay.json --out docs/img/insight2.png

Recipe tables are plotted on their validation images (their curve and their backbone's accuracy there);
``--batchnorm`` adds their curves with batch norm re-estimated (dashed). Rows of tables of several models are
labelled with the model.

    python experiments/plot_table.py docs/measurements/recipe_table_resnet{20,32,44,56}_post.json --batchnorm \
        --out docs/img/sturdiness_resnets.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, nargs="+", help="one or more JSON tables, plotted together")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="PANN accuracy vs precision")
    parser.add_argument("--batchnorm", action="store_true", help="also plot the curves with batch norm re-estimated")
    parser.add_argument("--ymin", type=float, help="lowest accuracy shown (%%): the collapse at low alpha is cut off")
    args = parser.parse_args()
    tables = [json.loads(path.read_text()) for path in args.tables]
    several = len({table.get("model") for table in tables}) > 1
    rows = [(f"{table['model']}: " if several else "", row) for table in tables for row in table["rows"]]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for prefix, row in rows:
        curve = row["plain"] if "plain" in row else row["validation_curve"]
        backbone = row["backbone"] if "plain" in row else row["backbone"]["validation"]
        alphas = sorted(curve, key=float)
        line, = ax.plot([float(a) for a in alphas], [100 * curve[a] for a in alphas], marker="o",
                        label=f"{prefix}{row['variant']} (backbone {100 * backbone:.2f}%)")
        ax.axhline(100 * backbone, color=line.get_color(), linestyle=":", linewidth=1)
        if args.batchnorm and "batchnorm" in row:
            bn = row["batchnorm"]["validation_curve"]
            ax.plot([float(a) for a in sorted(bn, key=float)], [100 * bn[a] for a in sorted(bn, key=float)],
                    marker="s", linestyle="--", color=line.get_color(), label=f"{prefix}batch norm re-estimated")
    ax.set_xlabel("precision alpha (ReLU error B 2^-alpha)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    if args.ymin is not None:
        ax.set_ylim(bottom=args.ymin)
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
