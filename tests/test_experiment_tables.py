"""The summary logic of the experiment scripts (experiments/ is not a package: loaded by path)."""

import importlib.util
import json
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _part(chosen, held, confirmed, area, span):
    return {"chosen_alpha": chosen, "held_out": held, "confirmed": confirmed,
            "sturdiness": {"lowest_alpha": chosen, "area": area, "span": span}}


def test_sturdiness_rows_read_a_recipe_table_as_json_writes_it():
    table = {"model": "resnet56", "rows": [
        {"variant": "post-training", "backbone": {"validation": 0.934, "held_out": 0.93375},
         **_part(9.0, {8.0: 0.9205, 9.0: 0.9301}, True, 4.1234, (5.0, 10.0)),
         "batchnorm": _part(8.0, {8.0: 0.9262}, False, 2.5, (7.0, 9.0))},
        {"variant": "aa 8 + KD", "backbone": {"validation": 0.9, "held_out": 0.9},
         **_part(None, {8.0: 0.5}, None, 3.0, (5.0, 10.0))},
    ]}
    table = json.loads(json.dumps(table))  # alphas become strings, spans lists, as in the files
    rows = _load("sturdiness_table").rows(table)
    assert rows == [
        "| resnet56 | post-training | 93.40 / 93.38 | 9, 93.01, yes, 4.123 | 8, 92.62, no, - |",
        "| resnet56 | aa 8 + KD | 90.00 / 90.00 | none within 1 point | not measured |",
    ]
