"""Search configuration: every problem reported at once, paths made absolute, sampled points -> training runs."""

from pathlib import Path

import pytest
import yaml

from search import config
from search.config import SearchConfigError
from pann.models.builders import build_model, save_weights
from search.backbones import backbone_key
from search.space import alpha_values

ROOT = Path(__file__).resolve().parents[1]


def minimal(**overrides) -> dict:
    data = {"name": "t", "target_accuracy": 0.5,
            "backbone": {"model": "resnet20", "dataset": "synthetic", "validation_size": 100},
            "space": {"alpha": {"low": 6, "high": 8}, "epochs": [1]}}
    data.update(overrides)
    return data


def problems(data: dict) -> list[str]:
    with pytest.raises(SearchConfigError) as err:
        config.from_dict(data)
    return err.value.problems


def test_minimal_config_gets_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    search = config.from_dict(minimal(storage="runs"))
    assert search.storage == str(tmp_path / "runs")
    assert search.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Path(search.data_dir).is_absolute()
    assert search.run_dir == tmp_path / "runs" / "t"


def test_every_problem_is_listed_with_its_field():
    found = problems(minimal(
        colour="red", target_accuracy=1.5,
        budget={"trials": 0, "cpus_per_trial": -1, "gpus_per_trial": 1.5, "bogus": 1},
        search={"confirmations": 0, "validation_margin": -0.01},
        training={"optimizer": "rmsprop", "model": "vgg11_bn"},
        space={"alpha": [1, 7], "weight_decay": [-1e-4], "mixup_alpha": [0], "leakage": ["magic"],
               "scope": ["local"], "dropout": [0.1]}))
    expected = ["colour: unknown field", "target_accuracy:", "budget.trials:", "budget.cpus_per_trial:",
                "budget.gpus_per_trial:", "budget.bogus: unknown field", "search.confirmations: must be an integer",
                "search.validation_margin: must be a number >= 0",
                "training.optimizer:",
                "training.model: set in the backbone", "space.alpha: 1 is not a precision", "space.weight_decay:",
                "space.mixup_alpha:", "space.leakage:", "space.scope:", "space.dropout: unknown dimension"]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)


@pytest.mark.parametrize("space, message", [
    ({}, "space: empty"),
    ({"alpha": []}, "space.alpha: no values"),
    ({"alpha": [7]}, "space: nothing to search"),
    ({"epochs": [1, 2]}, "space.alpha: required"),
    ({"alpha": {"low": 9, "high": 6}}, "space.alpha: low and high"),
    ({"alpha": {"low": 6.5, "high": 8}}, "space.alpha: low and high must be integers"),
])
def test_empty_or_malformed_space(space, message):
    assert any(p.startswith(message) for p in problems(minimal(space=space)))


def test_target_accuracy_bounds():
    assert any(p.startswith("target_accuracy") for p in problems(minimal(target_accuracy=0)))
    assert config.from_dict(minimal(target_accuracy=1)).target_accuracy == 1


def test_no_training_needs_pretrained_weights():
    assert any("needs backbone.weights" in p
               for p in problems(minimal(space={"alpha": [6, 7], "epochs": [0, 1]})))


def test_weights_are_found_in_the_data_folder(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    search = config.from_dict(minimal(backbone={"model": "resnet20", "dataset": "cifar10",
                                                "data_dir": str(tmp_path), "weights": "w.pt"}))
    assert search.weights == str(tmp_path / "w.pt")
    assert any(p.startswith("backbone.weights: file not found")
               for p in problems(minimal(backbone={"dataset": "cifar10", "data_dir": str(tmp_path),
                                                   "weights": "missing.pt"})))


def test_load_reports_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(FileNotFoundError):
        config.load(tmp_path / "nope.yaml")


def test_train_config_of_a_point_and_its_key(tmp_path):
    search = config.from_dict(minimal(training={"lr": 0.1, "train_limit": 64, "weight_decay": 0.1}))
    assert search.train_config({"alpha": 7, "epochs": 0}) is None
    a = search.train_config({"alpha": 7, "epochs": 2, "weight_decay": 0.0, "leakage": "approximation-aware",
                             "leakage_alpha": 6})
    assert (a.epochs, a.lr, a.weight_decay, a.leakage, a.alpha, a.train_limit) == (2, 0.1, 0.0,
                                                                                    "approximation-aware", 6, 64)
    # The approximation settings do not change the backbone; the training settings do.
    b = search.train_config({"alpha": 9, "epochs": 2, "weight_decay": 0.0, "leakage": "approximation-aware",
                             "leakage_alpha": 6, "scope": "global", "correction": "compensate"})
    c = search.train_config({"alpha": 7, "epochs": 2, "weight_decay": 1e-4, "leakage": "approximation-aware",
                             "leakage_alpha": 6})
    assert backbone_key(a) == backbone_key(b) != backbone_key(c)


SEARCH_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("finetune_"))


def test_every_shipped_search_config_is_checked():
    assert {"quickstart.yaml", "quickstart_recipes.yaml", "resnet20_per_layer.yaml"} <= set(SEARCH_CONFIGS)


@pytest.mark.parametrize("name", SEARCH_CONFIGS)
def test_shipped_configs_are_valid(name, shared_data, monkeypatch):
    monkeypatch.setenv("PANN_DATA_DIR", str(shared_data))
    search = config.load(ROOT / "configs" / name)
    # Every config fine-tunes the shared pretrained ResNet-20 but the paper-scale one, which trains from scratch.
    assert (search.weights is not None) == (name != "resnet20_cifar10_gpu.yaml")
    assert search.weights is None or Path(search.weights).is_file()
    assert yaml.safe_load((ROOT / "configs" / name).read_text())["name"] == search.name


def test_validation_margin_raises_what_validation_must_show_and_reaches_the_searchers():
    from pann.conversion.groups import LayerGroups
    from search.runner import strategy_of

    search = config.from_dict(minimal(search={"validation_margin": 0.005, "strategy": "greedy"}))
    assert search.validation_target == pytest.approx(0.505) and search.target_accuracy == 0.5
    assert strategy_of(search, LayerGroups("network", {"network": []})).searcher().walk.target == pytest.approx(0.505)
    assert config.from_dict(minimal()).validation_target == 0.5
    assert "search.validation_margin: must be a number >= 0 with target_accuracy + margin <= 1 (e.g. 0.005: " \
           "half a point) (got 0.6)" in problems(minimal(search={"validation_margin": 0.6}))


def test_best_first_strategy_walks_with_the_search_concurrency_and_unknown_strategies_are_named():
    from pann.conversion.groups import LayerGroups
    from search.runner import strategy_of
    from search.strategies.best_first import BestFirstWalk

    search = config.from_dict(minimal(search={"validation_margin": 0.002, "strategy": "best-first"},
                                      budget={"concurrency": 3}))
    walk = strategy_of(search, LayerGroups("stage", {"stem": ["net_relu"], "layer1": ["a", "b"]})).searcher().walk
    assert isinstance(walk, BestFirstWalk) and walk.concurrency == 3
    assert walk.target == pytest.approx(0.502) and walk.groups == ["stem", "layer1"]
    assert "search.strategy: expected one of best-first, greedy, lowering, optuna, pbt (got 'steepest')" in \
        problems(minimal(search={"strategy": "steepest"}))


def test_fractional_alphas_are_refused_at_network_granularity_and_kept_as_a_ladder_per_stage(tmp_path):
    found = problems(minimal(space={"alpha": [7.5, 8], "epochs": [1]}))
    assert "space.alpha: 7.5 is not a whole number of bits; fractional alphas (a ladder of rungs) need " \
           "granularity stage or layer" in found
    weights = tmp_path / "resnet20.pt"
    save_weights(build_model("resnet20"), weights)
    ladder = config.from_dict(minimal(
        space={"alpha": [8, 5.625, 6, 5], "epochs": [0]}, search={"granularity": "stage"},
        backbone={"model": "resnet20", "dataset": "synthetic", "validation_size": 100, "weights": str(weights)}))
    assert alpha_values(ladder.space) == [5.0, 5.625, 6.0, 8.0]


def test_split_sizes_that_do_not_fit_the_data_name_their_field():
    from search.splits import Splits

    too_many = config.from_dict(minimal(backbone={"model": "resnet20", "dataset": "synthetic",
                                                  "validation_from": "test", "validation_size": 450,
                                                  "confirmation_size": 100}))
    with pytest.raises(ValueError, match="backbone.confirmation_size: 100 .* leaves no test image of 500"):
        Splits.for_search(too_many)
    fits = config.from_dict(minimal(backbone={"model": "resnet20", "dataset": "synthetic", "validation_from": "test",
                                              "validation_size": 200, "confirmation_size": 100,
                                              "calibration_size": 50}))
    splits = Splits.for_search(fits)
    assert (len(splits.validation), len(splits.confirmation), len(splits.test)) == (200, 100, 200)
    # Disjoint slices of the test set: no image is in two of them.
    seen = [{bytes(x.numpy()) for x in s.images} for s in (splits.validation, splits.confirmation, splits.test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_a_tracking_uri_mlflow_cannot_record_to_is_refused():
    found = problems(minimal(tracking={"uri": "other.db"}))
    assert any(p.startswith("tracking.uri: 'other.db' is not an MLflow tracking URI") for p in found), found
    assert config.from_dict(minimal(tracking={"uri": "sqlite:///other.db"})).tracking_uri == "sqlite:///other.db"


def test_correction_and_its_image_count_are_checked_at_the_edge():
    found = problems(minimal(backbone={"model": "resnet20", "dataset": "synthetic", "validation_size": 100,
                                       "batchnorm_size": 0},
                             space={"alpha": [6, 7], "epochs": [1], "correction": ["none", "bn"]}))
    assert "space.correction: 'bn' is not one of none, compensate, batchnorm, batchnorm-in-range, bounds" in found
    assert any(p.startswith("backbone.batchnorm_size: must be an integer >= 1") for p in found), found


def test_batchnorm_images_are_training_images_sized_when_the_correction_is_used():
    from search.splits import Splits

    backbone = {"model": "resnet20", "dataset": "synthetic", "validation_from": "test", "validation_size": 200,
                "calibration_size": 50, "batchnorm_size": 5000}
    unused = Splits.for_search(config.from_dict(minimal(backbone=backbone)))  # 'none' needs no such images
    assert len(unused.calibration) == 50
    for correction in ("batchnorm", "batchnorm-in-range"):
        used = config.from_dict(minimal(backbone=backbone, space={"alpha": [6, 7], "epochs": [1],
                                                                  "correction": ["none", correction]}))
        with pytest.raises(ValueError, match="backbone.batchnorm_size: 5000 is more than the 1000 training images"):
            Splits.for_search(used)
    held_out = config.from_dict(minimal(backbone={**backbone, "validation_from": "train", "batchnorm_size": 300},
                                        space={"alpha": [6, 7], "epochs": [1], "correction": ["batchnorm"]}))
    splits = Splits.for_search(held_out)
    assert len(splits.batchnorm) == 300
    seen = {bytes(x.numpy()) for x in splits.batchnorm.images}
    assert not seen & {bytes(x.numpy()) for x in splits.validation.images}
    assert not seen & {bytes(x.numpy()) for x in splits.test.images}


def test_candidates_trained_at_their_own_alphas_are_checked_at_the_edge():
    from search.runner import groups_of

    at_point = {"alpha": [5, 6], "epochs": [2], "leakage": ["approximation-aware"], "leakage_alpha": ["point"],
                "alpha_start": [None, 7]}
    search = config.from_dict(minimal(space=at_point, search={"granularity": "stage"}))
    assert search.neighbours == 0
    groups = groups_of(search)
    point = {"alpha.stem": 6, "alpha.layer1": 5, "alpha.layer2": 5, "alpha.layer3": 5, "epochs": 2,
             "leakage": "approximation-aware", "leakage_alpha": "point", "alpha_start": 7}
    trained = search.train_config(point, groups.expand({"stem": 6, "layer1": 5, "layer2": 5, "layer3": 5}))
    assert trained.layer_alphas["net_relu"] == 6 and trained.layer_alphas["net_layer3_2_relu_18"] == 5
    assert (trained.alpha, trained.alpha_start) == (6, 7)
    uniform = search.train_config(point, groups.expand(dict.fromkeys(groups, 5.0)))
    assert uniform.layer_alphas is None and uniform.alpha == 5  # stored as the uniform network it is
    with pytest.raises(ValueError, match="needs them"):
        search.train_config(point)
    # At granularity network it trains the uniform candidate at its alpha, without neighbours.
    assert config.from_dict(minimal(space=at_point)).neighbours == 0
    # Every problem at once, each naming its field.
    found = problems(minimal(space={"alpha": [5, 6], "epochs": [0], "leakage": ["noise"],
                                    "leakage_alpha": ["point", 6]}, search={"neighbours": 1}))
    assert "space.leakage_alpha: 'point' (every candidate trained at its own alphas) cannot be mixed with fixed " \
           "training alphas" in found
    assert "space.leakage: training at the point's own alphas needs [approximation-aware] (got ['noise'])" in found
    assert "space.leakage_alpha: 'point' trains each candidate; give space.epochs a value > 0" in found
    assert "search.neighbours: must be 0 when candidates train at their own alphas (space.leakage_alpha: [point]): " \
           "a network trained at one alpha is good at that one only" in found
    # A per-layer search that trains must train each candidate at its own alphas.
    assert "space.epochs: granularity 'stage' trains each candidate at its own alphas: add space.leakage_alpha: " \
           "[point] and space.leakage: [approximation-aware] (or set epochs to 0 for a post-training search)" in \
        problems(minimal(search={"granularity": "stage"}))


def test_the_lowering_walk_needs_candidates_trained_at_their_own_alphas():
    assert "space.leakage_alpha: the lowering walk trains each step at its own alphas from the network it lowers; " \
           "set it to [point] (with space.leakage: [approximation-aware] and space.epochs > 0)" in \
        problems(minimal(search={"strategy": "lowering", "granularity": "stage"}))
    at_point = {"alpha": [5, 6], "epochs": [2], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]}
    assert config.from_dict(minimal(space=at_point, search={"strategy": "lowering", "granularity": "stage"}))


def test_a_lowering_step_continues_at_continue_lr_and_other_strategies_refuse_it():
    from search.config_checks import INITIAL

    at_point = {"alpha": [5, 6], "epochs": [2], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]}
    search = config.from_dict(minimal(space=at_point, training={"lr": 0.01},
                                      search={"strategy": "lowering", "granularity": "network",
                                              "continue_lr": 0.002}))
    point = {"alpha": 5, "epochs": 2, "leakage": "approximation-aware", "leakage_alpha": "point"}
    alphas = {"net_relu": 5.0}
    assert search.train_config(point, alphas).lr == 0.01  # a uniform point trains from the backbone at lr
    step = search.train_config({**point, INITIAL: "trained.pt"}, alphas)
    assert (step.lr, step.initial) == (0.002, "trained.pt")  # a step goes on from a trained network
    assert "search.continue_lr: only the lowering strategy continues trained networks (search.strategy is " \
           "'greedy')" in problems(minimal(space=at_point, search={"strategy": "greedy", "continue_lr": 0.002}))
    assert "search.continue_lr: must be a learning rate > 0, or null for the training's own (got 0)" in \
        problems(minimal(space=at_point, search={"strategy": "lowering", "continue_lr": 0}))


def test_final_reports_averages_only_networks_trained_at_their_own_alphas():
    at_point = {"alpha": [5, 6], "epochs": [4], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]}
    assert any(p.startswith("search.final_reports: must be an integer >= 1")
               for p in problems(minimal(space=at_point, search={"final_reports": 0})))
    assert "search.final_reports: averages the reports of networks trained at their own alphas; set " \
           "space.leakage_alpha: [point] or leave it at 1" in problems(minimal(search={"final_reports": 2}))
    assert config.from_dict(minimal(space=at_point, search={"final_reports": 2,
                                                            "granularity": "stage"})).final_reports == 2


def test_a_population_refuses_what_it_cannot_run_all_at_once():
    at_point = {"alpha": [5, 6], "epochs": [4], "leakage": ["approximation-aware"], "leakage_alpha": ["point"]}
    found = problems(minimal(space={**at_point, "leakage_alpha": [5], "lr": [0.01, 0.1]},
                             budget={"trials": 1}, search={"strategy": "pbt", "granularity": "stage",
                                                           "early_stopping": True, "perturbation_interval": 0}))
    assert "space.lr: the pbt strategy searches the alphas only; give one value (or search.strategy: optuna)" in found
    assert any(p.startswith("space.leakage_alpha: the pbt strategy trains every member at its own alphas") for p in found)
    assert any(p.startswith("search.early_stopping: the pbt strategy schedules its members itself") for p in found)
    assert "budget.trials: the pbt strategy's population needs at least 2 members" in found
    assert any(p.startswith("search.perturbation_interval: must be an integer >= 1") for p in found)
    assert config.from_dict(minimal(space=at_point, budget={"trials": 4, "concurrency": 2},
                                    search={"strategy": "pbt", "granularity": "stage", "early_stopping": False}))
