import json
import math
import os

import numpy as np
import pytest

from pann.approximation import catalog, composite as approximation, polynomial_cost
from pann.approximation.composite import ReluApproximation, composite_sign, direct_relu
from pann.approximation.catalog import get_approximation, relu_for_precision

# Lee et al.'s degree sets and the ReLU error of their published polynomials (log2).
LEE = {4: ((5,), 3.71), 5: ((13,), 4.86), 6: ((3, 7), 6.05), 7: ((7, 7), 7.04), 8: ((7, 15), 8.03),
       9: ((15, 15), 9.01), 10: ((7, 7, 13), 10.11), 11: ((7, 7, 27), 11.05), 12: ((7, 15, 27), 12.09),
       13: ((15, 15, 27), 13.08), 14: ((15, 27, 29), 14.02)}


@pytest.mark.parametrize("alpha", sorted(LEE))
def test_lee_degree_sets_reach_published_precision(alpha):
    degrees, published = LEE[alpha]
    approx = get_approximation("composite", degrees)
    assert approx.precision >= published - 0.15
    assert approx.depth == polynomial_cost.sign_depth(degrees) + 1


def test_precision_is_the_relu_error_on_a_dense_grid():
    approx = get_approximation("composite", (7, 15))
    t = np.linspace(-1, 1, 400001)
    error = np.abs(approx.relu(t) - np.maximum(t, 0)).max()
    assert -math.log2(error) == pytest.approx(approx.precision, abs=0.01)


def test_composite_stages_map_onto_next_interval():
    stages = composite_sign((7, 7), 0.05)
    t = np.linspace(0.05, 1, 10001)
    image = stages[0](t)
    # Stage 2 was solved on the image of stage 1, whose width it records.
    assert image.max() == pytest.approx(stages[1].width, rel=1e-6)
    assert np.abs(stages[1](image) - 1).max() < np.abs(image - 1).max()


@pytest.mark.slow
def test_relu_for_precision_is_cheapest_and_no_deeper_than_lee():
    for alpha in range(4, 15):
        # Solved from scratch (the session's cache is empty) in every CPU, as the CLI and the search driver do:
        # this fills the cache that the rest of the suite reads.
        approx = relu_for_precision(alpha, workers=os.cpu_count())
        assert approx.precision >= alpha
        assert approx.depth - 1 <= polynomial_cost.sign_depth(LEE[alpha][0])
    # Brute force over one- and two-stage sets: none cheaper than the answer reaches alpha 9.
    best = relu_for_precision(9)
    best_cost = (best.depth, best.multiplications)
    cheaper = [ds for ds in catalog._degree_sets() if len(ds) <= 2
               and (polynomial_cost.sign_depth(ds) + 1, polynomial_cost.sign_multiplications(ds) + 1) < best_cost]
    assert len(cheaper) > 10
    assert all(get_approximation("composite", ds).precision < 9 for ds in cheaper)


def test_cache_solves_once_and_survives_corruption(approximation_cache, monkeypatch):
    solves = []  # one entry per call of the composite solver's stage fitting: a counter, the real solver runs
    solver = approximation.composite_sign

    def counted(*args):
        solves.append(args)
        return solver(*args)

    monkeypatch.setattr(approximation, "composite_sign", counted)
    degrees = (3, 5)
    path = catalog._cache_path("composite", degrees)
    path.unlink(missing_ok=True)
    catalog._cached.cache_clear()

    approx = get_approximation("composite", degrees)
    solved = len(solves)
    assert solved > 0 and path.is_file()
    assert ReluApproximation.from_dict(json.loads(path.read_text())) == approx
    assert get_approximation("composite", degrees) == approx  # in memory
    catalog._cached.cache_clear()
    assert get_approximation("composite", degrees) == approx  # from disk
    assert len(solves) == solved, "a cached degree set was solved again"

    path.write_text("{not json")
    catalog._cached.cache_clear()
    assert get_approximation("composite", degrees) == approx
    assert len(solves) == 2 * solved  # a corrupt entry is solved again, once ...
    assert ReluApproximation.from_dict(json.loads(path.read_text())) == approx  # ... and rewritten


def test_json_export_round_trips():
    approx = get_approximation("composite", (7, 7))
    data = json.loads(approx.to_json())
    assert data["family"] == "composite" and data["degrees"] == [7, 7] and data["basis"] == "chebyshev"
    assert {"precision", "depth", "multiplications", "dead_zone", "stages", "interval"} <= set(data)
    again = ReluApproximation.from_dict(data)
    t = np.linspace(-1, 1, 1001)
    np.testing.assert_array_equal(again.relu(t), approx.relu(t))


def test_direct_minimax_relu_known_error():
    # Best quadratic for ReLU: x/2 + (x^2 + 1/8)/2, error 1/16 -> 4 bits.
    assert direct_relu(2).precision == pytest.approx(4.0, abs=1e-6)
    for degree in (4, 8, 16):
        minimax_bits = direct_relu(degree, "minimax").precision
        assert minimax_bits > direct_relu(degree, "least-squares").precision
    assert direct_relu(8).depth == 4


def test_fhe_cost_formulas():
    assert [polynomial_cost.polynomial_multiplications(d) for d in (3, 7, 15, 27, 31)] == [2, 4, 7, 11, 11]
    assert [polynomial_cost.polynomial_depth(d) for d in (3, 7, 15, 27, 31)] == [2, 3, 4, 5, 5]
    assert polynomial_cost.sign_depth((15, 15, 27)) == 13
    assert polynomial_cost.maxpool_rounds(2) == 2 and polynomial_cost.maxpool_rounds(3) == 4


@pytest.mark.parametrize("family,degrees,message", [
    ("composite", (16,), "even"), ("composite", (), "empty"), ("composite", (33,), "outside"),
    ("minimax", (1,), "degree >= 2"), ("minimax", (4, 4), "one degree"), ("cubic", (3,), "unknown"),
])
def test_impossible_degree_sets_are_rejected(family, degrees, message):
    with pytest.raises(ValueError, match=message):
        get_approximation(family, degrees)


@pytest.mark.parametrize("alpha", [1, 17, float("nan")])
def test_alpha_outside_supported_range(alpha):
    with pytest.raises(ValueError, match="supported range"):
        relu_for_precision(alpha)


def test_a_changed_cache_folder_is_never_answered_from_memory_of_another(tmp_path, monkeypatch):
    from pann.approximation import catalog
    first = catalog.get_approximation("composite", (3, 3))
    monkeypatch.setenv("PANN_CACHE_DIR", str(tmp_path))
    again = catalog.get_approximation("composite", (3, 3))
    assert again == first  # same maths...
    assert catalog._cache_path("composite", (3, 3)).is_file()  # ...solved into the new folder, not recalled
    assert str(catalog._cache_path("composite", (3, 3))).startswith(str(tmp_path))
