"""The summary logic of the experiment scripts (experiments/ is not a package: loaded by path)."""

import importlib.util
import json
from pathlib import Path

import pytest

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


def test_insight1_keeps_the_polynomial_on_one_side_and_measures_its_error_per_side():
    import torch
    import torch.nn.functional as F

    from pann.approximation.catalog import relu_for_precision
    from pann.conversion.modules import PolyReLU

    insight1 = _load("insight1_negative_noise")
    bound = 4.0
    x = torch.linspace(-6, 4, 101).view(1, 1, -1)  # 20 of the negatives lie outside [-B, B]
    poly = PolyReLU(relu_for_precision(5), bound, dtype=torch.float64, compiled=False)
    full = poly(x.double()).float()
    assert (full - F.relu(x)).abs().max() > 1e-3  # at alpha 5 the error is visible

    handle = poly.register_forward_hook(insight1.keep_side("negative"))
    negative = poly(x.double()).float()
    handle.remove()
    assert torch.equal(negative, torch.where(x < 0, full, F.relu(x)))
    handle = poly.register_forward_hook(insight1.keep_side("positive"))
    assert torch.equal(poly(x.double()).float(), torch.where(x >= 0, full, F.relu(x)))
    handle.remove()

    meter = insight1.ErrorMeter()
    poly.register_forward_hook(meter)
    poly(x.double())
    error = (full.double() - F.relu(x).double()) / bound
    means = meter.means()
    for side, mask in (("negative", (x < 0) & (x >= -bound)), ("positive", x > 0)):
        assert means[side]["mean"] == pytest.approx(float(error[mask].mean()))
        assert means[side]["mean_abs"] == pytest.approx(float(error[mask].abs().mean()))
    assert means["negative"]["mean"] != pytest.approx(means["positive"]["mean"])
