"""Draw a per-layer answer beside a uniform one (tracking.answer_picture), from a per_layer_table.py JSON row.

    python experiments/draw_answer.py docs/measurements/per_layer_resnet20_bn500_ladder_margin2/table.json \\
        --row 0 --uniform 8 --out docs/img/resnet20_ladder_greedy_answer.png [--model resnet20] [--preset mpcnn]

Searches since the picture was added draw their own answer (``answer.png`` in the parent run, written by
``pann export``); this draws the rows of tables measured before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pann.conversion.flow import prepare
from pann.cost.preset import load_preset
from pann.models.builders import build_model
from search.answer import drawn
from tracking.answer_picture import answer_picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--row", type=int, default=0)
    parser.add_argument("--uniform", type=float, required=True, help="the uniform alpha to draw beside it")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--preset", default="mpcnn")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    row = json.loads(args.table.read_text())[args.row]
    answer = {k.removeprefix("alpha."): float(v) for k, v in row["group_alphas"].items()}
    observed, preset = prepare(build_model(args.model)), load_preset(args.preset)
    networks = [drawn(f"{row['search']} ({100 * row['test']:.2f}% test)", answer, observed, preset),
                drawn(f"uniform alpha {args.uniform:g}", dict.fromkeys(answer, args.uniform), observed, preset)]
    answer_picture(args.out, networks, f"{row['search']}: the answer under {args.preset}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
