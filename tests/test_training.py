import collections
import contextlib

import pytest
import torch

from pann.approximation.catalog import relu_for_precision
from pann.data import synthetic
from pann.evaluate import MAX_LOSS, accuracies_and_losses, count_correct
from pann.models.builders import resnet20, save_weights, vgg11_bn
from pann.conversion.modules import PolyReLU
from pann.training.techniques import ApproximationAwareReLU, NegativeNoiseReLU, RandomSlopeReLU
from pann.training.trainer import ConfigError, TrainConfig, TrainingDiverged, evaluate_loss_accuracy, train


def test_random_slope_is_zero_mean_on_negatives_and_vanishes_in_eval():
    module = RandomSlopeReLU(0.1).train()
    x = torch.full((200000,), -2.0)
    y = module(x)
    slopes = y / x
    assert slopes.abs().max() <= 0.1 and slopes.std() > 0.05
    assert abs(slopes.mean()) < 1e-3
    positive = torch.linspace(0.1, 3, 100)
    assert torch.equal(module(positive), positive)
    assert torch.equal(module.eval()(x), torch.zeros_like(x))


@pytest.mark.parametrize("mode", ["precision", "std"])
def test_negative_noise_touches_only_negative_inputs(mode):
    module = NegativeNoiseReLU(mode, alpha=6, factor=0.05).train()
    x = torch.cat([torch.linspace(-8, -0.01, 100000), torch.linspace(0.01, 8, 100000)])
    y = module(x)
    assert torch.equal(y[100000:], x[100000:])
    expected_std = 8 * 2.0**-6 if mode == "precision" else 0.05 * x.std()
    assert y[:100000].std() == pytest.approx(float(expected_std), rel=0.02)
    assert abs(y[:100000].mean()) < 5 * expected_std / 100000**0.5  # zero-mean
    assert torch.equal(module.eval()(x), x.relu())


def test_approximation_aware_forward_is_the_polynomial_and_gradient_is_relus():
    approx = relu_for_precision(6)
    module = ApproximationAwareReLU(approx).train()
    x = torch.linspace(-4, 4, 1001, requires_grad=True)
    y = module(x)
    with torch.no_grad():
        torch.testing.assert_close(y, PolyReLU(approx, 4.0)(x))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (x.detach() > 0).float())
    assert torch.equal(module.eval()(x.detach()), x.detach().relu())


def tiny(**overrides) -> TrainConfig:
    values = dict(dataset="synthetic", epochs=2, batch_size=64, train_limit=256, validation_size=100,
                  lr=0.05, schedule="cosine")
    values.update(overrides)
    return TrainConfig.from_dict(values)


TECHNIQUES = {"none": None, "noise": NegativeNoiseReLU, "random-slope": RandomSlopeReLU,
              "approximation-aware": ApproximationAwareReLU}


@contextlib.contextmanager
def modules_run():
    """The types of every module whose forward runs inside the block (a global forward hook)."""
    seen: collections.Counter = collections.Counter()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.update([type(module)]) if module.training else None)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("leakage", list(TECHNIQUES))
def test_training_runs_with_each_technique(leakage):
    seen = []
    with modules_run() as ran:
        result = train(tiny(leakage=leakage, epochs=1, mixup_alpha=0.4 if leakage == "none" else None),
                       callback=lambda epoch, metrics: seen.append(metrics), progress=False)
    assert [m["epoch"] for m in seen] == [1] and result.history == seen
    assert 0 <= seen[0]["val_accuracy"] <= 1 and seen[0]["train_loss"] > 0
    # In training every one of resnet20's 19 ReLUs was the technique, on each of the 4 batches.
    technique = TECHNIQUES[leakage]
    for other in set(TECHNIQUES.values()) - {None, technique}:
        assert ran[other] == 0, f"{other.__name__} ran in a {leakage} training"
    if technique is not None:
        assert ran[technique] == 19 * 4
    # ... and the trained backbone comes back with exact ReLUs.
    assert not any(isinstance(m, tuple(t for t in TECHNIQUES.values() if t)) for m in result.model.modules())


def test_non_finite_logits_count_as_wrong():
    logits = torch.tensor([[2.0, 1.0], [float("nan"), 1.0], [1.0, float("inf")], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert count_correct(logits, labels) == 2  # rows 0 and 3; argmax of the nan and inf rows is not trusted

    class HalfNaN(torch.nn.Module):  # right on every image, but the second half of each batch overflows
        def forward(self, x):
            out = torch.nn.functional.one_hot(self.labels[:len(x)], 10).float()
            out[len(x) // 2:] = float("nan")
            return out

    data = synthetic(100)
    model = HalfNaN()
    model.labels = data.labels
    loss, accuracy = evaluate_loss_accuracy(model, data, 100, torch.device("cpu"))
    assert accuracy == 0.5
    # The right half scores the cross-entropy of a one-hot logit row; the overflowed half the largest loss.
    right = float(torch.nn.functional.cross_entropy(torch.eye(10)[:1], torch.tensor([0])))
    assert loss == pytest.approx((right + MAX_LOSS) / 2)
    [(accuracy, loss)] = accuracies_and_losses([model], data)
    assert (accuracy, loss) == (0.5, pytest.approx((right + MAX_LOSS) / 2))


@pytest.mark.slow
def test_training_learns_synthetic_data():
    result = train(tiny(epochs=3, train_limit=None), progress=False)
    assert result.history[-1]["val_accuracy"] > 0.5


def test_resume_from_checkpoint_reaches_the_same_state(tmp_path):
    straight = train(tiny(), progress=False).model.state_dict()
    path = tmp_path / "run.pt"
    train(tiny(), checkpoint=path, callback=lambda epoch, metrics: True, progress=False)  # stop after epoch 1
    assert torch.load(path, weights_only=True)["epoch"] == 1
    resumed = train(tiny(), checkpoint=path, progress=False).model.state_dict()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)


def test_diverging_run_stops_without_a_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(tiny(lr=1e12, schedule="constant", optimizer="sgd"), checkpoint=path, progress=False)
    assert not path.exists()


def test_bad_configuration_names_every_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"leakage": "dropout", "weight_decay": -1e-4, "mixup_alpha": 0,
                               "optimizer": "lion", "colour": "red"})
    message = str(info.value)
    for field in ("leakage", "weight_decay", "mixup_alpha", "optimizer", "colour: unknown field"):
        assert field in message
    wrong = tmp_path / "vgg.pt"
    save_weights(vgg11_bn(), wrong)
    with pytest.raises(ConfigError, match="pretrained: weights .* do not fit resnet20"):
        train(tiny(pretrained=str(wrong)), progress=False)


def test_weight_decay_can_spare_norm_and_bias(tmp_path):
    from pann.training.optimization import parameter_groups

    model = resnet20()
    groups = parameter_groups(model, tiny(decay_norm_and_bias=False, weight_decay=5e-3))
    assert groups[0]["weight_decay"] == 5e-3 and groups[1]["weight_decay"] == 0
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])


def test_a_run_continues_another_approximations_checkpoint_only_when_asked(tmp_path):
    from pann.training.checkpoints import CheckpointError

    at = {"leakage": "approximation-aware", "alpha": 6}
    path = tmp_path / "run.pt"
    train(tiny(**at), checkpoint=path, callback=lambda epoch, metrics: True, progress=False)  # stop after epoch 1
    lowered = tiny(**{**at, "alpha": 5})
    with pytest.raises(CheckpointError, match="alpha: 6 in the checkpoint, 5 now"):
        train(lowered, checkpoint=path, progress=False)
    # Population-based training's exploit: the weights, optimizer and schedule go on at the new polynomials.
    continued = train(lowered, checkpoint=path, progress=False, other_approximation=True)
    assert len(continued.history) == lowered.epochs and torch.load(path, weights_only=True)["config"]["alpha"] == 5
    with pytest.raises(CheckpointError, match="lr: "):  # what is not an approximation still refuses
        train(tiny(**{**at, "alpha": 5, "lr": 0.5}), checkpoint=path, progress=False, other_approximation=True)
