"""Score a network trained at one per-stage configuration on a search's own splits, as its trials would.

    PANN_DATA_DIR=../shared/data python experiments/score_on_search_splits.py configs/resnet20_trained_stage.yaml \\
        --weights runs/resnet20_5.625_layer3_5.pt --alphas stem=5.625,layer1=5.625,layer2=5.625,layer3=5 \\
        [--json docs/measurements/trained_per_layer/....json]

The point is scored as a trained-at-its-own-alphas candidate of that search (``leakage_alpha: point``: every B
measured under the PANN on the search's calibration images, then the point's correction) on the validation,
confirmation and test images of the search's split, with its cost under the search's preset: what a trial of the
search would report for a network trained outside it (``pann train``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pann.data import NUM_CLASSES
from pann.files import write_bytes_atomic
from pann.models.builders import build_model
from search import config
from search.backbones import Backbone
from search.runner import groups_of
from search.space import dimension
from search.trial import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--alphas", required=True, help="GROUP=ALPHA,... for every group of the search")
    parser.add_argument("--correction", default="none")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    search = config.load(args.config)
    groups = groups_of(search)
    alphas = {g: float(a) for g, a in (item.split("=") for item in args.alphas.split(","))}
    if set(alphas) != set(groups):
        raise SystemExit(f"score_on_search_splits: --alphas must name every group: {', '.join(groups)}")
    point = {**{dimension(groups, g): a for g, a in alphas.items()}, "epochs": 1, "leakage": "approximation-aware",
             "leakage_alpha": "point", "correction": args.correction}
    backbone = Backbone(build_model(search.model, NUM_CLASSES[search.dataset], args.weights), args.weights)
    row = {"config": str(args.config), "weights": str(args.weights), "alphas": alphas}
    for part in ("validation", "confirmation", "test"):
        record = measure(search, groups, point, backbone, part, neighbours=False)[0]
        row.update({part: record["accuracy"], "bootstraps": record["bootstraps"],
                    "polynomial_levels": record["polynomial_levels"]})
    print(json.dumps(row))
    if args.json:
        write_bytes_atomic(args.json, json.dumps(row, indent=2).encode())


if __name__ == "__main__":
    main()
