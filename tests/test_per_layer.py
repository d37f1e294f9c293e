"""Per-layer PANNs: layer groups, one approximation and B per layer, and the portable spec file."""

import json

import pytest
import torch

from pann.conversion import spec as pann_spec
from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import calibrate, convert, observers, poly_modules, prepare
from pann.conversion.groups import expand, layer_groups
from pann.models.builders import build_model




INPUTS = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet20():
    observed = prepare(build_model("resnet20"))
    calibrate(observed, [INPUTS])
    return observed


@pytest.fixture(scope="module")
def vgg11():
    observed = prepare(build_model("vgg11_bn"))
    calibrate(observed, [torch.randn(4, 3, 32, 32)])
    return observed


def test_resnet_groups_at_each_granularity(resnet20):
    names = list(observers(resnet20))
    assert layer_groups(resnet20, "network") == {"network": names}
    stages = layer_groups(resnet20, "stage")
    assert list(stages) == ["stem", "layer1", "layer2", "layer3"]
    assert stages["stem"] == ["net_relu"] and [len(v) for v in stages.values()] == [1, 6, 6, 6]
    assert sum(stages.values(), []) == names  # every layer once, in execution order
    assert layer_groups(resnet20, "layer") == {n: [n] for n in names}


def test_vgg_stage_groups_are_cut_after_each_max_pool(vgg11):
    blocks = layer_groups(vgg11, "stage")
    assert list(blocks) == [f"block{i}" for i in range(1, 6)]
    layers = dict(vgg11.named_modules())
    for members in blocks.values():  # each block ends with its max-pool, and holds no other
        kinds = [type(layers[m]).__name__ for m in members]
        assert kinds[-1] == "ObservedMaxPool2d" and "ObservedMaxPool2d" not in kinds[:-1]


def test_bad_granularity_and_group_values_are_named(resnet20):
    with pytest.raises(ValueError, match="unknown granularity 'block'"):
        layer_groups(resnet20, "block")
    with pytest.raises(ValueError, match="missing layer3; unknown layer9"):
        expand(layer_groups(resnet20, "stage"), {"stem": 8, "layer1": 8, "layer2": 8, "layer9": 7})
    with pytest.raises(ValueError, match="no stages or max-pool blocks"):
        layer_groups(prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())), "stage")


def test_convert_takes_one_approximation_per_layer(resnet20):
    alphas = expand(layer_groups(resnet20, "stage"), {"stem": 9, "layer1": 8, "layer2": 7, "layer3": 6})
    pann = convert(resnet20, {n: relu_for_precision(a) for n, a in alphas.items()}, compiled=False)
    got = {n: m.approximation.degrees for n, m in poly_modules(pann).items()}
    assert got == {n: relu_for_precision(a).degrees for n, a in alphas.items()}
    assert len({m.approximation.degrees for m in poly_modules(pann).values()}) == 4
    with pytest.raises(ValueError, match="missing net_relu"):
        convert(resnet20, {n: relu_for_precision(8) for n in list(alphas)[1:]})


def test_spec_round_trip_rebuilds_the_same_pann(resnet20, tmp_path):
    alphas = expand(layer_groups(resnet20, "stage"), {"stem": 9, "layer1": 8, "layer2": 7, "layer3": 6})
    pann = convert(resnet20, {n: relu_for_precision(a) for n, a in alphas.items()}, margin=2.0,
                   dtype=torch.float64, compiled=False)
    path = tmp_path / "spec.json"
    pann_spec.spec_of(pann, model="resnet20").save(path)
    data = json.loads(path.read_text())
    assert (data["format"], data["version"], data["model"]) == ("pann-spec", 1, "resnet20")
    layer = data["layers"][0]
    assert layer["name"] == "net_relu" and layer["kind"] == "relu" and layer["basis"] == "chebyshev"
    assert [s["degree"] for s in layer["stages"]] == layer["degrees"] == list(relu_for_precision(9).degrees)
    rebuilt = pann_spec.apply(resnet20, pann_spec.load(path), dtype=torch.float64, compiled=False)
    expected = pann(INPUTS)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(rebuilt(INPUTS), expected, rtol=0, atol=0)
    assert {n: m.bound.item() for n, m in poly_modules(rebuilt).items()} == \
        {n: m.bound.item() for n, m in poly_modules(pann).items()}


def _spec_data(resnet20) -> dict:
    return pann_spec.spec_of(convert(resnet20, relu_for_precision(8), compiled=False)).to_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=3), "version: 3 is not a known version"),
    (lambda d: d.update(version=2), "batchnorm: version 2 needs a non-empty object"),
    (lambda d: d.update(batchnorm={"net.bn1": {"running_mean": [0.0]}}), "batchnorm: batch-norm statistics need "
                                                                         "version 2"),
    (lambda d: d.update(version=2, batchnorm={"net.bn1": {"running_mean": [0.0], "running_var": [-1.0]}}),
     "batchnorm.net.bn1: needs running_mean and running_var"),
    (lambda d: d.update(format="onnx"), "format: expected 'pann-spec'"),
    (lambda d: d["layers"][0].update(degrees=[8, 15]), "degree 8 is even"),
    (lambda d: d["layers"][0].update(B=-1), "B: must be a positive number"),
    (lambda d: d["layers"][1].pop("stages"), "layers[1]: missing stages"),
    (lambda d: d["layers"][2].update(family="spline"), "family: 'spline' is not one of"),
])
def test_bad_specs_are_refused_naming_the_problem(resnet20, edit, message):
    data = _spec_data(resnet20)
    edit(data)
    with pytest.raises(pann_spec.SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pann_spec.from_dict(data)


def test_a_spec_of_another_model_names_the_layers_that_do_not_fit(resnet20):
    data = _spec_data(resnet20)
    data["layers"][0]["name"] = "features_0"
    spec = pann_spec.from_dict(data)
    with pytest.raises(ValueError, match="missing net_relu; unknown features_0"):
        pann_spec.apply(resnet20, spec)


def test_a_spec_carries_batchnorm_statistics_that_replace_the_weights(resnet20, tmp_path):
    pann = convert(resnet20, relu_for_precision(7), compiled=False)
    norms = {n: m for n, m in pann.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for i, norm in enumerate(norms.values()):  # statistics the weights do not have
        norm.running_mean.fill_(0.01 * i)
        norm.running_var.fill_(1 + 0.1 * i)
    path = tmp_path / "spec.json"
    pann_spec.spec_of(pann, batchnorm_statistics=True, correction="batchnorm").save(path)
    data = json.loads(path.read_text())
    assert (data["version"], data["correction"], len(data["batchnorm"])) == (2, "batchnorm", 19)
    rebuilt = pann_spec.apply(resnet20, pann_spec.load(path), compiled=False)
    torch.testing.assert_close(rebuilt(INPUTS), pann(INPUTS), rtol=0, atol=0)
    plain = pann_spec.apply(resnet20, pann_spec.from_dict(_spec_data(resnet20)), compiled=False)
    assert plain.net.bn1.running_var.eq(1).all()  # a version-1 spec keeps the weights' statistics
    data["batchnorm"]["net.bn1"] = {"running_mean": [0.0] * 3, "running_var": [1.0] * 3}
    data["batchnorm"]["features.0"] = data["batchnorm"].pop("net.layer3.2.bn2")
    with pytest.raises(ValueError, match="features.0: the model has no such batch norm; net.layer3.2.bn2: no "
                                         "statistics given; net.bn1.running_mean: expected 16 values; "
                                         "net.bn1.running_var: expected 16 values"):
        pann_spec.apply(resnet20, pann_spec.from_dict(data))
