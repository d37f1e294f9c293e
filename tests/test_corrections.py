import pytest
import torch
from torch import nn

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import calibrate, convert, prepare
from pann.conversion.corrections import compensate_leakage, in_range_images, recalibrate_bounds, reestimate_batchnorm
from pann.conversion.modules import PolyMaxPool2d, PolyReLU


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()).eval()


def pann_of(model, x, alpha=5):
    observed = prepare(model)
    calibrate(observed, [x])
    return convert(observed, relu_for_precision(alpha))


def test_leakage_compensation_removes_the_measured_mean_shift():
    x = torch.randn(64, 3, 8, 8)
    pann = pann_of(conv_net(), x)
    first = next(m for m in pann.modules() if isinstance(m, PolyReLU))
    captured = {}
    first.register_forward_hook(lambda m, i, o: captured.update(input=i[0], output=o))
    with torch.no_grad():
        pann(x)
    shift = (captured["output"] - captured["input"].relu()).mean(dim=(0, 2, 3))
    assert shift.abs().max() > 1e-3  # alpha 5 leaks visibly
    offsets = compensate_leakage(pann, [x])
    torch.testing.assert_close(next(iter(offsets.values())), shift, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        pann(x)
    remaining = (captured["output"] - captured["input"].relu()).mean(dim=(0, 2, 3))
    assert remaining.abs().max() < 1e-5


def test_batchnorm_reestimation_matches_statistics_under_the_pann():
    x = torch.randn(128, 3, 8, 8)
    model = conv_net()
    pann = pann_of(model, x)
    first, second = [m for m in pann.modules() if isinstance(m, nn.BatchNorm2d)]
    before = second.running_mean.clone()
    captured = {}
    first.register_forward_hook(lambda m, i, o: captured.update(input=i[0]))
    reestimate_batchnorm(pann, [x[:64], x[64:]])
    assert not first.training
    with torch.no_grad():
        pann(x)
    # The first norm's input does not depend on any polynomial: its new mean is exactly the data's.
    torch.testing.assert_close(first.running_mean, captured["input"].mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first.running_var, captured["input"].var(dim=(0, 2, 3), unbiased=False),
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(second.running_mean, before)


def test_batchnorm_reestimation_skips_entries_a_polynomial_blew_up():
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x[1, 0, 2, 2] = float("inf")
    x[3, 1, 0, 1] = float("nan")
    norm = nn.BatchNorm2d(2).eval()
    reestimate_batchnorm(nn.Sequential(norm), [x])
    for c in range(2):
        finite = x[:, c][torch.isfinite(x[:, c])]
        assert finite.numel() == 35
        torch.testing.assert_close(norm.running_mean[c], finite.mean(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(norm.running_var[c], finite.var(unbiased=False), atol=1e-6, rtol=1e-6)


def two_layer_pann() -> nn.Module:
    """ReLU on [-1, 1], then 3 x its output into a norm, then ReLU on [-2, 2]."""
    approx = relu_for_precision(5)
    pann = nn.Sequential(PolyReLU(approx, 1.0, compiled=False), nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3),
                         PolyReLU(approx, 2.0, compiled=False)).eval()
    with torch.no_grad():
        pann[1].weight.copy_(3 * torch.eye(3))  # the second layer sees 3 x the first one's output
    return pann


IMAGES = torch.tensor([[0.5, -0.9, 0.1],    # in range at both layers (second: 1.5 <= 2)
                       [1.5, 0.0, 0.0],     # outside the first layer's [-1, 1]
                       [0.0, 0.9, -1.0],    # in the first, but about 2.7 at the second
                       [-1.0, 1.0, 0.0],    # on the first's bounds, but 3 at the second
                       [0.2, 0.3, 0.6]])    # in range at both (second: at most 1.8)


def test_in_range_images_drops_each_image_with_an_input_outside_its_layers_interval():
    assert in_range_images(two_layer_pann(), IMAGES).tolist() == [True, False, False, False, True]


def test_in_range_images_holds_a_polynomial_max_pool_to_half_its_bound():
    # B = 2 bounds the differences a - b, so the inputs must stay inside [-1, 1].
    pool = PolyMaxPool2d(relu_for_precision(5), 2.0, kernel_size=2, compiled=False).eval()
    images = torch.tensor([[[[0.9, -0.9], [0.5, 0.0]]],    # every input inside [-1, 1]
                           [[[1.2, 0.0], [0.0, 0.0]]],     # one input past 1: a - b can reach past B
                           [[[-1.0, 1.0], [0.0, 0.0]]]])   # on the bounds: |a - b| = 2 = B at most
    assert in_range_images(pool, images).tolist() == [True, False, True]


def test_in_range_reestimation_takes_the_statistics_of_the_images_inside_every_interval_only():
    everything, in_range = two_layer_pann(), two_layer_pann()
    assert reestimate_batchnorm(everything, [IMAGES[:2], IMAGES[2:]]) == 5
    assert reestimate_batchnorm(in_range, [IMAGES[:2], IMAGES[2:]], in_range=True) == 2
    norm_input = {}
    in_range[2].register_forward_pre_hook(lambda m, args: norm_input.update(x=args[0]))
    with torch.no_grad():
        in_range(IMAGES[[0, 4]])
    torch.testing.assert_close(in_range[2].running_mean, norm_input["x"].mean(0))
    torch.testing.assert_close(in_range[2].running_var, norm_input["x"].var(0, unbiased=False))
    assert not torch.allclose(everything[2].running_mean, in_range[2].running_mean)


def test_in_range_reestimation_without_any_image_in_range_is_an_error():
    with pytest.raises(ValueError, match=r"no image stays inside every layer's \[-B, B\]"):
        reestimate_batchnorm(two_layer_pann(), [IMAGES[1:2]], in_range=True)


def test_recalibrated_bounds_are_the_largest_inputs_each_layer_sees_under_the_recalibrated_pann():
    approx = relu_for_precision(5)
    pann = nn.Sequential(PolyReLU(approx, 100.0, compiled=False), nn.Linear(3, 3), PolyReLU(approx, 100.0, compiled=False),
                         nn.Unflatten(1, (1, 1, 3)), PolyMaxPool2d(approx, 100.0, kernel_size=(1, 3), compiled=False))
    with torch.no_grad():
        pann[1].weight.copy_(torch.tensor([[3.0, 0, 0], [0, -2, 0], [1, 1, 1]]))
        pann[1].bias.fill_(0.5)
    x = torch.tensor([[0.5, -0.9, 0.1], [2.0, 0.3, -4.0], [-1.0, 1.0, 0.0]])
    bounds = recalibrate_bounds(pann, [x[:1], x[1:]], margin=1.5)
    # Direct computation: the inputs each layer receives when the recalibrated PANN runs on the data.
    seen = {}
    for name, m in pann.named_modules():
        if isinstance(m, (PolyReLU, PolyMaxPool2d)):
            m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].abs().max()))
    with torch.no_grad():
        pann(x)
    assert bounds == pytest.approx({"0": 1.5 * 4.0, "2": 1.5 * float(seen["2"]), "4": 2 * 1.5 * float(seen["4"])})
    assert float(seen["2"]) != pytest.approx(float(seen["0"]))  # the second layer's inputs come from the first one
    assert [float(pann[i].bound) for i in (0, 2, 4)] == pytest.approx(list(bounds.values()))
    with pytest.raises(ValueError, match="no data"):
        recalibrate_bounds(pann, [])
    with pytest.raises(ValueError, match="no polynomial layers"):
        recalibrate_bounds(nn.Linear(3, 3), [x])
