import numpy as np
import pytest

from pann.approximation.remez import RemezError, basis_indices, minimax


def one(x):
    return np.ones_like(x)


@pytest.mark.parametrize("a", [0.01, 0.3, 0.5, 0.9])
def test_linear_sign_approximation_has_closed_form_error(a):
    # Best c*x for 1 on [a, 1]: c = 2 / (1 + a), error (1 - a) / (1 + a).
    fit = minimax(one, (a, 1.0), 1, "odd")
    assert fit.error == pytest.approx((1 - a) / (1 + a), rel=1e-12)
    assert fit.coef[1] == pytest.approx(2 / (1 + a), rel=1e-12)


@pytest.mark.parametrize("degree,a", [(3, 0.1), (7, 0.01), (15, 1e-3), (27, 1e-4), (31, 0.2)])
def test_sign_approximation_equioscillates(degree, a):
    fit = minimax(one, (a, 1.0), degree, "odd")
    n = (degree + 1) // 2
    errors = fit(fit.reference) - 1
    assert fit.reference.size == n + 1
    assert np.all(np.diff(np.sign(errors)) != 0), "errors must alternate in sign"
    np.testing.assert_allclose(np.abs(errors), fit.error, rtol=1e-6)
    # ... and no point of the interval has a larger error.
    grid = np.linspace(a, 1.0, 200001)
    assert np.abs(fit(grid) - 1).max() <= fit.error * (1 + 1e-6)
    # Odd: the same error on the mirrored interval.
    np.testing.assert_allclose(fit(-grid), -fit(grid), atol=1e-15)


def test_chebyshev_alternation_theorem_for_monomial():
    # The best even quadratic for x^4 on [-1, 1] leaves T_4 / 8: error exactly 1/8.
    fit = minimax(lambda x: x**4, (0.0, 1.0), 2, "even", 1.0)
    assert fit.error == pytest.approx(1 / 8, rel=1e-9)


def test_absolute_value_approaches_bernstein_constant():
    # Bernstein: n * E_n(|x|) -> 0.2801694990... for the best degree-n approximation.
    fit = minimax(np.abs, (0.0, 1.0), 32, "even", 1.0)
    assert 32 * fit.error == pytest.approx(0.2801694990, rel=2e-3)
    assert minimax(np.abs, (0.0, 1.0), 2, "even", 1.0).error == pytest.approx(1 / 8, rel=1e-9)


def test_more_degree_never_hurts():
    errors = [minimax(one, (0.05, 1.0), d, "odd").error for d in (3, 5, 7, 9, 11)]
    assert errors == sorted(errors, reverse=True)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="odd degree"):
        basis_indices(4, "odd")
    with pytest.raises(ValueError, match="0 <= a < b"):
        minimax(one, (0.5, 0.2), 3, "odd")
    assert issubclass(RemezError, ArithmeticError)
