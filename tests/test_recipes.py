"""Fine-tuning recipes (distillation, precision schedule), batch-norm re-estimation and sturdiness."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import calibrate, convert, prepare, replace_activations
from pann.conversion.corrections import reestimate_batchnorm
from pann.training.distillation import Teacher, distillation_loss
from pann.models.builders import resnet20, save_weights
from pann.training.schedules import PrecisionSchedule, alpha_at
from pann.training.sturdiness import sturdiness
from pann.training.techniques import ApproximationAwareReLU
from pann.training.trainer import ConfigError, TrainConfig, train
from search import config
from search.config import SearchConfigError


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_matches_a_hand_computed_value():
    student, teacher, label, T, w = [1.0, 2.0, 0.0], [0.0, 1.0, 3.0], 2, 2.0, 0.25
    p_teacher = _softmax([t / T for t in teacher])
    p_student = _softmax([s / T for s in student])
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student))
    ce = -math.log(_softmax(student)[label])
    expected = w * T * T * kl + (1 - w) * ce
    loss = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([label]), T, w)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Averaged over the batch, and weight 0 is plain cross-entropy.
    pair = distillation_loss(torch.tensor([student, student]), torch.tensor([teacher, teacher]),
                             torch.tensor([label, label]), T, w)
    assert float(pair) == pytest.approx(expected, rel=1e-6)
    plain = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([label]), T, 0.0)
    assert float(plain) == pytest.approx(ce, rel=1e-6)


def test_distillation_loss_is_zero_soft_term_for_identical_logits_and_spares_the_teacher():
    logits = torch.randn(4, 10, requires_grad=True)
    teacher = logits.detach().clone().requires_grad_(True)
    loss = distillation_loss(logits, teacher, torch.zeros(4, dtype=torch.long), 3.0, 1.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(logits, teacher, torch.zeros(4, dtype=torch.long), 0.0, 0.5)


def test_alpha_schedule_per_position():
    assert [alpha_at(k, 6, 9, 7) for k in range(6)] == [9, 9, 8, 8, 7, 7]
    assert [alpha_at(k, 3, 9, 7) for k in range(3)] == [9, 8, 7]
    assert [alpha_at(k, 2, 9, 7) for k in range(2)] == [9, 7]  # too few positions: skip, still end at target
    assert [alpha_at(k, 4, 7.5, 7) for k in range(4)] == [7.5, 7.5, 7, 7]
    assert [alpha_at(k, 3, 7, 7) for k in range(3)] == [7, 7, 7]
    with pytest.raises(ValueError, match="outside"):
        alpha_at(3, 3, 9, 7)


def test_precision_schedule_swaps_the_polynomial_of_every_aware_relu():
    # Low alphas: their approximations solve in a moment in the fresh cache of the test session.
    model = replace_activations(resnet20(), lambda: ApproximationAwareReLU(relu_for_precision(2)),
                                require_polynomial=False)
    schedule = PrecisionSchedule(model, 4, 2, epochs=1, steps_per_epoch=3, granularity="step")
    aware = [m for m in model.modules() if isinstance(m, ApproximationAwareReLU)]
    for step, alpha in enumerate((4, 3, 2)):
        assert schedule.step(0, step) == alpha
        assert all(m.polynomial.approximation == relu_for_precision(alpha) for m in aware)
    by_epoch = PrecisionSchedule(model, 4, 2, epochs=3, steps_per_epoch=5, granularity="epoch")
    assert [by_epoch.step(epoch, step) for epoch in range(3) for step in (0, 4)] == [4, 4, 3, 3, 2, 2]
    with pytest.raises(ValueError, match="approximation-aware"):
        PrecisionSchedule(resnet20(), 4, 2, 1, 3)


def test_a_per_layer_schedule_lowers_every_layer_from_the_start_to_its_own_alpha():
    model = replace_activations(resnet20(), lambda: ApproximationAwareReLU(relu_for_precision(2)),
                                require_polynomial=False)
    names = [n for n, m in model.named_modules() if isinstance(m, ApproximationAwareReLU)]
    targets = {n: 2 if i % 2 else 3 for i, n in enumerate(names)}
    schedule = PrecisionSchedule(model, 4, targets, epochs=3, steps_per_epoch=1)
    modules = dict(model.named_modules())
    seen = []
    for epoch in range(3):
        mean = schedule.step(epoch, 0)
        alphas = {n: modules[n].polynomial.approximation for n in names}
        seen.append([alphas[names[0]], alphas[names[1]]])
        assert mean == pytest.approx(sum(schedule.current.values()) / len(names))
    # 4 -> 3 over 3 epochs for the first layer (4, 3, 3); 4 -> 2 for the second (4, 3, 2)
    assert seen == [[relu_for_precision(a) for a in pair] for pair in ([4, 4], [3, 3], [3, 2])]
    with pytest.raises(ValueError, match="no target alpha for"):
        PrecisionSchedule(model, 4, {names[0]: 2}, epochs=1, steps_per_epoch=1)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "untrained.pt"
    torch.manual_seed(1)
    save_weights(resnet20(), path)
    return str(path)


def tiny(**overrides) -> TrainConfig:
    values = dict(dataset="synthetic", epochs=1, batch_size=64, train_limit=256, validation_size=100,
                  lr=0.05, schedule="cosine", augment=False)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def test_precision_schedule_runs_in_training():
    aware = dict(leakage="approximation-aware", alpha=2, alpha_start=4, alpha_granularity="step")
    history = train(tiny(**aware, epochs=2, train_limit=128), progress=False).history  # 4 steps: 4, 4 | 3, 2
    assert [m["alpha"] for m in history] == [4, 2.5]
    assert "alpha" not in train(tiny(), progress=False).history[0]  # no schedule, nothing reported


def test_distillation_consults_the_teacher_in_training(weights):
    plain = train(tiny(pretrained=weights), progress=False)
    distilled = train(tiny(pretrained=weights, distill_weight=1.0, distill_temperature=1.0), progress=False)
    changed = [k for k, v in plain.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, distilled.model.state_dict()[k])]
    assert changed
    # The student starts as its teacher, so the pure distillation loss (KL to the teacher's logits) starts
    # near 0, far below the cross-entropy of an untrained network on 10 classes (about ln 10).
    assert plain.history[0]["train_loss"] > 1.5
    assert distilled.history[0]["train_loss"] < 0.2 * plain.history[0]["train_loss"]


def test_teacher_is_frozen_and_counts_its_batches():
    teacher = Teacher(nn.Linear(3, 2).train())
    out = teacher(torch.ones(1, 3))
    assert not teacher.network.training and not out.requires_grad and teacher.batches == 1


def test_recipe_config_lists_every_bad_field():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(dict(distill_weight=1.5, distill_temperature=0, alpha=7, alpha_start=6,
                                   alpha_granularity="batch"))
    message = str(info.value)
    for field in ("distill_weight: must lie in [0, 1]", "distill_weight: distillation needs the backbone",
                  "distill_temperature: must be positive", "alpha_start: must lie in alpha..16",
                  "alpha_start: a precision schedule needs leakage", "alpha_granularity: expected one of"):
        assert field in message


def test_sturdiness_of_a_curve():
    curve = {4: 0.10, 5: 0.50, 6: 0.80, 7: 0.905, 8: 0.91, 9: 0.915, 10: 0.92}
    result = sturdiness(curve, backbone=0.915)
    assert result.lowest_alpha == 7
    # Trapezoids over 5..10: (0.5+0.8)/2 + (0.8+0.905)/2 + (0.905+0.91)/2 + (0.91+0.915)/2 + (0.915+0.92)/2
    assert result.area == pytest.approx(0.65 + 0.8525 + 0.9075 + 0.9125 + 0.9175)
    assert sturdiness(curve, backbone=0.95).lowest_alpha is None
    with pytest.raises(ValueError, match="no point at alpha 10"):
        sturdiness({5: 0.5, 9: 0.9}, backbone=0.9)


def test_search_can_vary_each_recipe(weights):
    data = {"name": "t", "target_accuracy": 0.5,
            "backbone": {"model": "resnet20", "dataset": "synthetic", "validation_size": 100, "weights": weights},
            "training": {"leakage": "approximation-aware", "alpha": 7},
            "space": {"alpha": {"low": 6, "high": 8}, "epochs": [1],
                      "distill_weight": {"low": 0.0, "high": 1.0}, "distill_temperature": [2.0, 4.0],
                      "alpha_start": {"low": 7, "high": 10}, "alpha_granularity": ["epoch", "step"]}}
    search = config.from_dict(data)
    trained = search.train_config({"alpha": 7, "epochs": 1, "distill_weight": 0.9,
                                   "distill_temperature": 4.0, "alpha_start": 9, "alpha_granularity": "step"})
    assert (trained.distill_weight, trained.distill_temperature, trained.alpha_start, trained.alpha_granularity,
            trained.pretrained) == (0.9, 4.0, 9, "step", weights)
    bad = {**data, "space": {**data["space"], "distill_weight": [1.5], "alpha_granularity": {"low": 0, "high": 1}}}
    with pytest.raises(SearchConfigError) as info:
        config.from_dict(bad)
    assert any(p.startswith("space.distill_weight: must lie in [0, 1]") for p in info.value.problems)
    assert "space.alpha_granularity: must be a list of choices" in info.value.problems


def test_batchnorm_reestimation_equals_the_statistics_of_every_norms_input_under_the_pann():
    torch.manual_seed(0)
    x = torch.rand(96, 3, 32, 32)
    observed = prepare(resnet20())
    calibrate(observed, [x])
    pann = convert(observed, relu_for_precision(3), compiled=False)
    norms = [m for m in pann.modules() if isinstance(m, nn.BatchNorm2d)]
    reestimate_batchnorm(pann, [x[:40], x[40:]])
    # Direct computation: the inputs each norm receives when the PANN, now re-estimated, runs on the data.
    seen = {}
    handles = [m.register_forward_pre_hook(lambda m, i: seen.__setitem__(m, i[0].double())) for m in norms]
    with torch.no_grad():
        pann(x)
    for h in handles:
        h.remove()
    assert len(seen) == len(norms) == 19
    for norm in norms:
        inputs = seen[norm]
        torch.testing.assert_close(norm.running_mean, inputs.mean(dim=(0, 2, 3)).float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(norm.running_var, inputs.var(dim=(0, 2, 3), unbiased=False).float(),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no data"):
        reestimate_batchnorm(pann, [])


@pytest.mark.parametrize("name, alpha, layer_alphas", [("finetune_resnet20_kd.yaml", 7, None),
                                                     ("finetune_resnet20_per_layer_kd.yaml", 6,
                                                      {"layer2": 5, "layer3": 5})])
def test_shipped_recipe_configs_are_valid(name, alpha, layer_alphas, shared_data):
    path = Path(__file__).resolve().parents[1] / "configs" / name
    data = yaml.safe_load(path.read_text())
    data["pretrained"] = str(shared_data / "resnet20_cifar10.pt")  # the file's path is relative to the repository
    recipe = TrainConfig.from_dict(data)
    assert (recipe.leakage, recipe.alpha, recipe.distill_weight, recipe.validation_size, recipe.layer_alphas) == (
        "approximation-aware", alpha, 0.9, 0, layer_alphas)


def test_layer_alphas_give_each_aware_relu_the_alpha_of_its_stage_or_layer():
    from pann.training.trainer import _set_layer_alphas

    backbone = resnet20()
    model = replace_activations(backbone, lambda: ApproximationAwareReLU(relu_for_precision(5)),
                                require_polynomial=False)
    _set_layer_alphas(model, backbone, tiny(leakage="approximation-aware", alpha=5, layer_alphas={"layer3": 3}))
    alphas = {name: 3 if m.polynomial.approximation == relu_for_precision(3) else 5
              for name, m in model.named_modules() if isinstance(m, ApproximationAwareReLU)}
    assert sorted(n for n, a in alphas.items() if a == 3) == [f"net_layer3_{b}_relu_{13 + i}"
                                                              for i, b in enumerate((0, 0, 1, 1, 2, 2))]
    assert sum(a == 5 for a in alphas.values()) == 13
    _set_layer_alphas(model, backbone, tiny(leakage="approximation-aware", alpha=5, layer_alphas={"net_relu": 3}))
    assert [n for n, m in model.named_modules() if isinstance(m, ApproximationAwareReLU)
            and m.polynomial.approximation == relu_for_precision(3)] == ["net_relu"]


def test_layer_alphas_reach_training_and_bad_ones_are_listed():
    aware = dict(leakage="approximation-aware", alpha=5, train_limit=128)
    uniform = train(tiny(**aware), progress=False).model.state_dict()
    per_layer = train(tiny(**aware, layer_alphas={"stem": 5, "layer3": 3}), progress=False).model.state_dict()
    assert any(not torch.equal(v, per_layer[k]) for k, v in uniform.items() if v.is_floating_point())
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(dict(leakage="approximation-aware", layer_alphas={"layer9": 5, "stem": 1}))
    assert "layer_alphas: the alphas of stem must lie in 2..16" in str(info.value)
    for bad, message in (({"layer9": 5}, "layer9: neither stages nor activation layers of Classifier"),
                         ({"stem": 6, "net_relu": 5}, "stem, net_relu: stages and layers mixed"),
                         ({}, "must map stage or layer names to alphas")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict(dict(leakage="approximation-aware", layer_alphas=bad))
    with pytest.raises(ConfigError, match="per-layer alphas need leakage 'approximation-aware'"):
        TrainConfig.from_dict(dict(layer_alphas={"stem": 6}))
    with pytest.raises(ConfigError, match=r"every alpha must be at most alpha_start \(8\)"):
        TrainConfig.from_dict(dict(leakage="approximation-aware", alpha=6, alpha_start=8, layer_alphas={"stem": 9}))


def test_a_per_layer_network_lowers_progressively_and_draws_fresh_images_each_epoch():
    aware = dict(leakage="approximation-aware", alpha=2, alpha_start=4, layer_alphas={"stem": 3},
                 epochs=2, train_limit=256, epoch_images=64)
    history = train(tiny(**aware), progress=False).history  # one step an epoch: 4 everywhere, then 3 and 2
    assert [m["alpha"] for m in history] == [4, (3 + 18 * 2) / 19]
    again = train(tiny(**aware), progress=False).history
    assert [m["train_loss"] for m in again] == [m["train_loss"] for m in history]  # seeded draws
    whole = train(tiny(**{**aware, "epoch_images": None}), progress=False).history
    assert whole[0]["train_loss"] != history[0]["train_loss"]
    with pytest.raises(ConfigError, match="epoch_images: must be a positive integer"):
        tiny(epoch_images=0)
