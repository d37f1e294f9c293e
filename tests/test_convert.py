import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pann.conversion.modules
from pann.approximation.catalog import get_approximation, relu_for_precision
from pann.conversion.flow import (NonPolynomialError, calibrate, convert, interval_bounds, observers, out_of_range,
                          out_of_range_rate, prepare, reset_out_of_range)
from pann.conversion.modules import (ObservedMaxPool2d, ObservedReLU, PolyMaxPool2d, PolyReLU, chebyshev,
                          odd_chebyshev)


class Functional(nn.Module):
    """Every way of writing ReLU and max-pool that conversion must catch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = F.relu(x) + torch.relu(x - 0.1) + (x - 0.2).relu()
        x = self.pool(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return self.fc(x.flatten(1))


def test_odd_chebyshev_matches_numpy():
    rng = np.random.default_rng(0)
    coef = rng.normal(size=8)
    x = np.linspace(-1, 1, 1001)
    full = np.zeros(16)
    full[1::2] = coef
    expected = np.polynomial.chebyshev.chebval(x, full)
    got = odd_chebyshev(torch.tensor(x), torch.tensor(coef)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-13)
    got_full = chebyshev(torch.tensor(x), torch.tensor(full)).numpy()
    np.testing.assert_allclose(got_full, expected, atol=1e-13)


@pytest.mark.parametrize("alpha", [6, 9, 14])
def test_poly_relu_float32_matches_float64_reference(alpha):
    approx = relu_for_precision(alpha)
    x = torch.linspace(-20, 20, 200001)
    reference = PolyReLU(approx, 20.0, dtype=torch.float64, compiled=False)(x.double())
    # float32 rounding stays below 5% of the approximation error: precision moves < 0.07 bit.
    for compiled in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to eager would pass otherwise
            fast = PolyReLU(approx, 20.0, dtype=torch.float32, compiled=compiled)(x)
        assert pann.conversion.modules._compile_failure is None  # ...or an earlier failure in this process
        assert (fast.double() - reference).abs().max() < 0.05 * 20 * 2.0**-approx.precision
    # The reference has the approximation's precision on [-B, B].
    assert (reference - x.double().relu()).abs().max() <= 20 * 2.0**-approx.precision * (1 + 1e-6)


def test_poly_relu_gradient_path_equals_inference_path():
    approx = relu_for_precision(8)
    module = PolyReLU(approx, 4.0)
    x = torch.linspace(-4, 4, 1001, requires_grad=True)
    y = module(x)
    y.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(module(x), y.detach())
    # Autograd gives the polynomial's own derivative (checked by central differences).
    reference = PolyReLU(approx, 4.0, dtype=torch.float64)
    xd, h = x.detach().double(), 1e-6
    with torch.no_grad():
        numeric = (reference(xd + h) - reference(xd - h)) / (2 * h)
    torch.testing.assert_close(x.grad.double(), numeric, atol=2e-3, rtol=1e-3)


def test_prepare_catches_modules_and_functional_calls():
    observed = prepare(Functional())
    kinds = [type(m) for m in observers(observed).values()]
    assert kinds.count(ObservedReLU) == 4 and kinds.count(ObservedMaxPool2d) == 2
    # No exact ReLU or max-pool is left in the graph.
    for node in observed.graph.nodes:
        if node.op != "call_module":
            assert node.target not in (F.relu, torch.relu, "relu", F.max_pool2d)


def test_converted_model_matches_backbone_at_high_precision():
    model = Functional().eval()
    x = torch.rand(16, 3, 8, 8)
    observed = prepare(model)
    calibrate(observed, [x])
    pann = convert(observed, relu_for_precision(14), "layer", 1.0)
    kinds = [type(m) for m in pann.modules()]
    assert kinds.count(PolyReLU) == 4 and kinds.count(PolyMaxPool2d) == 2
    with torch.no_grad():
        expected, got = model(x), pann(x)
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert out_of_range_rate(pann) == 0
    # At low precision the outputs move.
    coarse = convert(observed, relu_for_precision(3), "layer", 1.0)
    with torch.no_grad():
        assert (coarse(x) - expected).abs().max() > (got - expected).abs().max()


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_poly_maxpool_is_a_tournament_of_pairwise_max(kernel, stride, padding):
    x = torch.rand(2, 3, 9, 9) * 2 - 1
    approx = relu_for_precision(14)
    pool = PolyMaxPool2d(approx, 2.0, kernel, stride, padding)  # differences lie in [-2, 2]
    expected = F.max_pool2d(x, kernel, stride, padding)
    got = pool(x)
    assert got.shape == expected.shape
    rounds = int(np.ceil(np.log2(kernel * kernel)))
    assert (got - expected).abs().max() <= rounds * 2.0 * 2.0**-approx.precision + 1e-5


def test_out_of_range_inputs_are_counted_not_fatal():
    module = PolyReLU(relu_for_precision(9), 1.0)
    x = torch.tensor([0.5, -0.5, 1.5, -3.0, 1e6, 0.0])
    y = module(x)
    assert module.out_of_range.item() == 3 and module.seen.item() == 6
    assert torch.isfinite(y[:2]).all()
    model = nn.Sequential(nn.ReLU())
    observed = prepare(model)
    calibrate(observed, [torch.linspace(-1, 1, 100)])
    pann = convert(observed, relu_for_precision(9))
    pann(torch.tensor([0.1, 2.0, -5.0, 0.3]))
    assert list(out_of_range(pann).values()) == [0.5]
    reset_out_of_range(pann)
    assert out_of_range_rate(pann) == 0


def test_interval_bounds_global_and_per_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    observed = prepare(model)
    calibrate(observed, [torch.randn(64, 4) * 3])
    layer = interval_bounds(observed, "layer", 1.5)
    glob = interval_bounds(observed, "global", 1.0)
    ranges = [float(m.max_abs) for m in observers(observed).values()]
    assert list(layer.values()) == pytest.approx([1.5 * r for r in ranges])
    assert set(glob.values()) == {max(ranges)}
    with pytest.raises(ValueError, match="scope"):
        interval_bounds(observed, "channel")
    with pytest.raises(ValueError, match="margin"):
        interval_bounds(observed, "layer", 0)
    with pytest.raises(ValueError, match="calibrate"):
        interval_bounds(prepare(model), "layer")


def test_non_polynomial_operations_are_named():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.GELU()

        def forward(self, x):
            return torch.sigmoid(self.act(self.fc(x))) + F.relu(x)

    with pytest.raises(NonPolynomialError, match=r"act \(GELU\).*sigmoid"):
        prepare(Bad())


def test_untraceable_model_gives_clear_error():
    class Dynamic(nn.Module):
        def forward(self, x):
            return x.relu() if x.sum() > 0 else x

    with pytest.raises(ValueError, match="cannot trace Dynamic"):
        prepare(Dynamic())


def test_direct_family_converts():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    observed = prepare(model)
    x = torch.randn(32, 4)
    calibrate(observed, [x])
    pann = convert(observed, get_approximation("minimax", (16,)))
    with torch.no_grad():
        error = (pann(x) - model(x)).abs().max()
    bound = max(interval_bounds(observed).values())
    assert error <= bound * 2.0**-get_approximation("minimax", (16,)).precision * 1.01


@pytest.mark.parametrize("alpha", [7, 13])
def test_fast_network_agrees_with_float64_reference(alpha):
    model = Functional().eval()
    x = torch.rand(32, 3, 8, 8)
    observed = prepare(model)
    calibrate(observed, [x])
    approx = relu_for_precision(alpha)
    fast = convert(observed, approx)
    reference = convert(observed, approx, dtype=torch.float64, compiled=False)
    with torch.no_grad():
        got, expected = fast(x), reference(x)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    assert torch.equal(got.argmax(1), expected.argmax(1))
