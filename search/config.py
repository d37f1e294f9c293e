"""The search configuration: one YAML file, validated before anything starts.

Every problem is reported at once, each naming its field (``budget.trials: must be ...``). Paths are
resolved to absolute paths here, because Ray runs every trial in its own working directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pann.files import read_yaml
from pann.training.trainer import TrainConfig
from pann.user_input import ProblemsError
from search.config_checks import (AT_POINT, INITIAL, TRAINING_DIMENSIONS, TRAINING_SEED, check_backbone, check_budget,
                                  check_identity, check_search, check_space, check_training,
                                  field_path, flatten)  # noqa: F401 (field_path)

class SearchConfigError(ProblemsError):
    """A search configuration with problems; ``problems`` lists them all, one per line."""

    separator = "\n  "

    def __init__(self, problems: list[str], source: str = "search config"):
        super().__init__(problems, f"invalid {source}:\n  ")


@dataclass(frozen=True)
class SearchConfig:
    """A validated search. ``space`` maps each dimension to a list of choices or a ``{low, high[, log]}`` range.

    ``validation_from='train'`` holds ``validation_size`` images out of the training set (the test set
    then only scores the answer). A backbone pretrained on the *whole* training set has seen those
    images, so for it ``'test'`` takes the validation images from the start of the test set instead,
    and the answer is scored on the rest of the test set.
    """

    name: str
    target_accuracy: float
    model: str
    dataset: str
    data_dir: str
    weights: str | None
    space: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    validation_from: str = "train"
    validation_size: int = 5000
    confirmation_size: int = 0
    calibration_size: int = 5000
    batchnorm_size: int = 2000  # augmented training images for the corrections 'batchnorm(-in-range)'
    trials: int = 20
    time_s: float | None = None
    concurrency: int = 1
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_failures: int = 1
    seed: int = 0
    early_stopping: bool = True
    grace_period: int = 1
    depth_objective: bool = False
    neighbours: int | None = None  # default: 1 with granularity 'network', else 0
    reuse_backbones: bool = True
    granularity: str = "network"
    cost: str = "alpha"
    preset: str = "mpcnn"
    strategy: str = "optuna"
    confirmations: int = 20  # validation-feasible candidates scored on the confirmation images at most
    validation_margin: float = 0.0  # accuracy over the target a point needs on validation to count as feasible
    continue_lr: float | None = None  # the lr of a trial continuing a trained network (lowering); None: training's
    perturbation_interval: int = 2  # epochs between the exploits of population-based training (strategy pbt)
    final_reports: int = 1  # a network trained at its own alphas ends with the mean of its last N validation reports
    compile: bool = True
    storage: str = "runs"
    tracking_uri: str = ""
    experiment: str = "pann-search"
    weights_url: str | None = None  # a mirror of the named weights' source folder

    @property
    def corrections(self) -> tuple[str, ...]:
        """The post-training corrections the space can sample."""
        value = self.space.get("correction", "none")
        return tuple(value) if isinstance(value, list) else (value,)

    @property
    def validation_target(self) -> float:
        """What a point needs on the validation images to count as feasible (the searchers' constraint, the
        greedy walk's steps, the front, the candidates for confirmation): the target plus ``validation_margin``.
        The confirmation and test images are judged against the target itself."""
        return self.target_accuracy + self.validation_margin

    @property
    def run_dir(self) -> Path:
        """Ray Tune's experiment folder and the Optuna database of this search."""
        return Path(self.storage) / self.name

    @property
    def backbone_dir(self) -> Path:
        """Trained backbones, keyed by their training settings, shared by every search in ``storage``."""
        return Path(self.storage) / "backbones"

    def trains(self, point: Mapping[str, Any]) -> bool:
        """Whether a sampled point trains its backbone (``epochs`` > 0) rather than converting the pretrained one."""
        return point.get("epochs", self.training.get("epochs", 0)) != 0

    def trains_at_point(self, point: Mapping[str, Any]) -> bool:
        """Whether a point's candidate is trained with its own polynomials in the loop (``leakage_alpha: point``):
        every layer at the alpha the point gives it. Such a network is good at that configuration only."""
        return self.trains(point) and point.get("leakage_alpha") == AT_POINT

    def train_config(self, point: Mapping[str, Any], layer_alphas: Mapping[str, float] | None = None) -> TrainConfig | None:
        """The training run a sampled point needs, or None when it uses the pretrained weights as they are.
        A point trained at its own alphas (:meth:`trains_at_point`) needs them, by activation layer, in
        ``layer_alphas``."""
        if not self.trains(point):
            return None
        settings = {**self.training, "model": self.model, "dataset": self.dataset, "data_dir": self.data_dir,
                    "pretrained": self.weights, "validation_size": self.validation_size}
        for name in TRAINING_DIMENSIONS:
            if name in point:
                settings["alpha" if name == "leakage_alpha" else name] = point[name]
        if TRAINING_SEED in point:  # a population's member (search.strategies.population): not a dimension
            settings["seed"] = point[TRAINING_SEED]
        if point.get(INITIAL):  # a strategy's continuation (search.strategies.lowering): not a dimension
            settings["initial"] = point[INITIAL]
            if self.continue_lr is not None:  # a trained network goes on at its own learning rate
                settings["lr"] = self.continue_lr
        if self.trains_at_point(point):
            if not layer_alphas:
                raise ValueError("a point trained at its own alphas needs them (layer_alphas)")
            alphas = sorted(set(layer_alphas.values()))
            # One alpha everywhere trains (and is stored) as the uniform network it is.
            settings.update(alpha=alphas[-1], layer_alphas=dict(layer_alphas) if len(alphas) > 1 else None)
        return TrainConfig(**settings)


def from_dict(data: Mapping[str, Any], source: str = "search config") -> SearchConfig:
    """Validate a parsed YAML search config; raise :class:`SearchConfigError` with every problem."""
    if not isinstance(data, Mapping):
        raise SearchConfigError([f"must be a mapping of sections, got {type(data).__name__}"], source)
    values, problems = flatten(data)
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)
                if f.default is not dataclasses.MISSING}
    merged = {**defaults, **{k: v for k, v in values.items() if k in known}}
    check_identity(data, merged, problems)
    check_backbone(merged, problems)
    check_budget(merged, problems)
    check_search(merged, problems)
    base = check_training(merged, problems)
    check_space(merged, base, problems)
    if problems:
        raise SearchConfigError(problems, source)
    return SearchConfig(**{k: v for k, v in merged.items() if k in known})


def load(path: str | Path) -> SearchConfig:
    """Read and validate a YAML search config."""
    return from_dict(read_yaml(path), str(path))
