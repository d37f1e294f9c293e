import pytest
import torch

from pann.conversion.flow import calibrate, convert, observers, prepare
from pann.approximation.catalog import relu_for_precision
from pann.data import load_dataset
from pann.evaluate import accuracy
from pann.models.builders import build_model, load_weights, model_names, resnet20, save_weights, vgg11_bn


@pytest.mark.parametrize("name,relus,pools", [("resnet20", 19, 0), ("resnet32", 31, 0), ("vgg11_bn", 8, 5)])
def test_cifar_models_shapes_and_activation_count(name, relus, pools):
    model = build_model(name).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    found = [type(m).__name__ for m in observers(prepare(model)).values()]
    assert found.count("ObservedReLU") == relus and found.count("ObservedMaxPool2d") == pools


def test_torchvision_model_by_name_converts_with_padded_maxpool():
    model = build_model("resnet18", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    observed = prepare(model)
    calibrate(observed, [x])
    pann = convert(observed, relu_for_precision(12))
    with torch.no_grad():
        assert torch.allclose(pann(x), model(x), atol=0.05 * model(x).abs().max().item())
    assert "resnet18" in model_names()


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        build_model("resnet21")


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    path = tmp_path / "vgg.pt"
    save_weights(vgg11_bn(), path)
    with pytest.raises(ValueError, match="do not fit resnet20; missing: .*unexpected"):
        resnet20(weights=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        resnet20(weights=tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        resnet20(weights=tmp_path / "garbage.pt")


def test_checkpoint_round_trip_keeps_normalisation(tmp_path):
    model = resnet20()
    model.mean.fill_(0.25)
    save_weights(model, tmp_path / "m.pt", epoch=3)
    again = load_weights(resnet20(), tmp_path / "m.pt")
    assert torch.equal(again.mean, model.mean)
    for a, b in zip(again.net.state_dict().values(), model.net.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_shared_pretrained_resnets_load_strictly(shared_data, depth):
    path = shared_data / f"resnet{depth}_cifar10.pt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    model = build_model(f"resnet{depth}", weights=path)
    stored = {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True).items()}
    loaded = model.net.state_dict()
    assert set(loaded) == set(stored)
    for key, value in stored.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.slow
def test_shared_resnet20_backbone_accuracy(shared_data):
    model = resnet20(weights=shared_data / "resnet20_cifar10.pt")
    test = load_dataset("cifar10", "test", shared_data)
    assert accuracy(model, test) == pytest.approx(0.9173, abs=1e-9)  # 9173 / 10000, as published
