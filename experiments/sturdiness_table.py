"""Sturdiness table: per network and variant of `recipe_table.py --json` tables, the lowest alpha as converted and
with batch norm re-estimated, each with its held-out confirmation and its area over alpha 5..10.

    python experiments/sturdiness_table.py docs/measurements/recipe_table_resnet{20,32,44,56}_post.json

Prints one Markdown row per variant. The lowest alpha is the one `recipe_table.py` chose on the validation images
(within 1 point of the pretrained backbone there); "held out" is the PANN's accuracy at it on the held-out images and
"confirmed" whether that is within 1 point of the pretrained backbone there. An area is printed only where the curve
covers the whole span (else "-").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = ("| network | variant | backbone (validation / held out) | as converted: lowest alpha, held out at it, "
          "confirmed, area | batch norm re-estimated: lowest alpha, held out at it, confirmed, area |\n"
          "|---|---|---:|---:|---:|")


def _part(part: dict | None, span: tuple[float, float]) -> str:
    """``alpha, held out%, yes/no, area`` of one curve of a row (as converted or with batch norm re-estimated)."""
    if part is None:
        return "not measured"
    alpha = part["chosen_alpha"]
    if alpha is None:
        return "none within 1 point"
    held = {float(a): accuracy for a, accuracy in part["held_out"].items()}[float(alpha)]
    stur = part["sturdiness"]
    area = f"{stur['area']:.3f}" if tuple(stur["span"]) == span else "-"
    return f"{alpha:g}, {100 * held:.2f}, {'yes' if part['confirmed'] else 'no'}, {area}"


def rows(table: dict, span: tuple[float, float] = (5.0, 10.0)) -> list[str]:
    """One Markdown row per variant of a `recipe_table.py` JSON table."""
    out = []
    for row in table["rows"]:
        backbone = row["backbone"]
        out.append(f"| {table['model']} | {row['variant']} | {100 * backbone['validation']:.2f} / "
                   f"{100 * backbone['held_out']:.2f} | {_part(row, span)} | {_part(row.get('batchnorm'), span)} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, nargs="+", help="recipe_table.py --json files")
    args = parser.parse_args()
    print(HEADER)
    for path in args.tables:
        print("\n".join(rows(json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
