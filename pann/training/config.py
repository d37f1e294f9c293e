"""The configuration of a training run: :class:`TrainConfig`, plain data validated as a whole.

:func:`TrainConfig.from_dict` and :meth:`TrainConfig.problems` report every bad field at once
(:class:`ConfigError`), before anything runs. :func:`pann.training.trainer.train` runs a config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pann.data import DATASETS
from pann.models.builders import model_names
from pann.training.schedules import SCHEDULE_UNITS

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
LEAKAGE_TREATMENTS = ("none", "noise", "random-slope", "approximation-aware")


class ConfigError(ValueError):
    """Invalid configuration; the message names every bad field."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. ``leakage`` picks the negative-input treatment:

    * ``noise``: Gaussian noise on negative inputs, std ``B 2^-alpha`` (``noise_mode='precision'``)
      or ``noise_factor * std(x)`` (``noise_mode='std'``);
    * ``random-slope``: slope ``U(-slope, slope)`` on negative inputs;
    * ``approximation-aware``: the true polynomial of ``alpha`` in the forward pass,
      straight-through gradient, on ``[-B, B]`` with ``B = margin * running max |x|``.

    Recipes, each independent of the others (:mod:`pann.training.distillation`, :mod:`pann.training.schedules`):

    * ``distill_weight`` > 0: knowledge distillation from the ``pretrained`` backbone's logits,
      ``w T^2 KL(teacher || student) + (1 - w) CE`` at temperature ``distill_temperature``;
    * ``alpha_start``: with approximation-aware training, a precision schedule from ``alpha_start``
      down to ``alpha``, one bit at a time, moved every epoch or every step (``alpha_granularity``);
    * ``layer_alphas``: approximation-aware training with a per-layer PANN in the loop: an alpha per
      stage (``{"stem": 6, "layer3": 5}``) or per activation layer (names as :func:`pann.conversion.flow.observers`
      gives them), the layers not named at ``alpha`` (:func:`pann.conversion.groups.alphas_by_layer`).

    With ``alpha_start`` and ``layer_alphas`` together every layer steps down from ``alpha_start`` to its own alpha
    (progressive lowering). ``epoch_images`` makes an epoch a fresh random draw of that many training images
    (a unit of training that a search's early stopping compares; every image, once, by default).

    ``initial`` starts training from other weights than ``pretrained`` (e.g. a network trained at other alphas,
    lowered further); ``pretrained`` stays the teacher of distillation.

    ``validation_size=0`` trains on the whole training set (no validation metrics).
    """

    model: str = "resnet20"
    dataset: str = "cifar10"
    data_dir: str | None = None
    pretrained: str | None = None
    initial: str | None = None
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "nesterov"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True
    schedule: str = "cosine"
    milestones: tuple[int, ...] = (100, 150)
    gamma: float = 0.1
    mixup_alpha: float | None = None
    augment: bool = True
    leakage: str = "none"
    alpha: float = 8.0
    noise_mode: str = "precision"
    noise_factor: float = 0.01
    slope: float = 0.01
    margin: float = 1.0
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    alpha_start: float | None = None
    alpha_granularity: str = "epoch"
    layer_alphas: dict[str, float] | None = None
    validation_size: int = 5000
    train_limit: int | None = None
    epoch_images: int | None = None
    seed: int = 0
    amp: bool = True
    device: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config; raise :class:`ConfigError` listing every problem."""
        known = {f.name for f in dataclasses.fields(cls)}
        problems = [f"{key}: unknown field" for key in data if key not in known]
        values = {k: v for k, v in data.items() if k in known}
        if "milestones" in values and isinstance(values["milestones"], list):
            values["milestones"] = tuple(values["milestones"])
        config = cls(**values)
        problems += config.problems()
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        return config

    def problems(self) -> list[str]:
        p = []

        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                p.append(f"{name}: {message} (got {getattr(self, name)!r})")

        need(self.model in model_names(), "model", "unknown model")
        need(self.dataset in DATASETS, "dataset", f"expected one of {', '.join(DATASETS)}")
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "must be an integer >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "must be an integer >= 1")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"expected one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, "schedule", f"expected one of {', '.join(SCHEDULES)}")
        need(_number(self.lr) and self.lr > 0, "lr", "must be positive")
        need(_number(self.momentum) and 0 <= self.momentum < 1, "momentum", "must lie in [0, 1)")
        need(_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(_number(self.gamma) and 0 < self.gamma <= 1, "gamma", "must lie in (0, 1]")
        need(self.mixup_alpha is None or _number(self.mixup_alpha) and self.mixup_alpha > 0, "mixup_alpha",
             "must be > 0 (or null for no Mixup)")
        need(self.leakage in LEAKAGE_TREATMENTS, "leakage", f"expected one of {', '.join(LEAKAGE_TREATMENTS)}")
        need(_number(self.alpha) and 2 <= self.alpha <= 16, "alpha", "must lie in 2..16")
        need(self.noise_mode in ("precision", "std"), "noise_mode", "expected 'precision' or 'std'")
        need(_number(self.noise_factor) and self.noise_factor > 0, "noise_factor", "must be positive")
        need(_number(self.slope) and self.slope > 0, "slope", "must be positive")
        need(_number(self.margin) and self.margin > 0, "margin", "must be positive")
        need(_number(self.distill_weight) and 0 <= self.distill_weight <= 1, "distill_weight", "must lie in [0, 1]")
        need(not self.distill_weight or self.pretrained is not None, "distill_weight",
             "distillation needs the backbone to learn from (set pretrained)")
        need(_number(self.distill_temperature) and self.distill_temperature > 0, "distill_temperature",
             "must be positive")
        need(self.alpha_start is None or _number(self.alpha_start) and _number(self.alpha)
             and self.alpha <= self.alpha_start <= 16, "alpha_start", "must lie in alpha..16 (or null for no schedule)")
        need(self.alpha_start is None or self.leakage == "approximation-aware", "alpha_start",
             "a precision schedule needs leakage 'approximation-aware'")
        need(self.alpha_granularity in SCHEDULE_UNITS, "alpha_granularity",
             f"expected one of {', '.join(SCHEDULE_UNITS)}")
        p += self._layer_alpha_problems()
        need(isinstance(self.validation_size, int) and self.validation_size >= 0, "validation_size",
             "must be an integer >= 0")
        need(self.train_limit is None or isinstance(self.train_limit, int) and self.train_limit >= 1,
             "train_limit", "must be a positive integer or null")
        need(self.epoch_images is None or isinstance(self.epoch_images, int) and self.epoch_images >= 1,
             "epoch_images", "must be a positive integer or null")
        for name in ("pretrained", "initial"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                p.append(f"{name}: weights file not found ({getattr(self, name)!r})")
        return p

    def _layer_alpha_problems(self) -> list[str]:
        if self.layer_alphas is None:
            return []
        where = f"layer_alphas: {self.layer_alphas!r}"
        if not isinstance(self.layer_alphas, Mapping) or not self.layer_alphas:
            return [f"{where} must map stage or layer names to alphas (or be null)"]
        bad = [str(k) for k, v in self.layer_alphas.items() if not (_number(v) and 2 <= v <= 16)]
        if bad:
            return [f"layer_alphas: the alphas of {', '.join(bad)} must lie in 2..16"]
        if self.leakage != "approximation-aware":
            return ["layer_alphas: per-layer alphas need leakage 'approximation-aware'"]
        if self.alpha_start is not None and _number(self.alpha_start) and max(self.layer_alphas.values()) > self.alpha_start:
            return [f"layer_alphas: every alpha must be at most alpha_start ({self.alpha_start:g}), where the "
                    "precision schedule starts"]
        if self.model not in model_names():
            return []
        from pann.conversion.groups import alphas_by_layer
        try:
            alphas_by_layer(_prepared(self.model), self.layer_alphas, self.alpha)
        except ValueError as exc:
            return [f"layer_alphas: {exc}"]
        return []


@functools.lru_cache(maxsize=None)
def _prepared(model: str) -> nn.Module:
    """``model`` with range observers, to name its layers: traced once per model, however often a config is checked
    (a search checks one per value of every training dimension)."""
    from pann.conversion.flow import prepare
    from pann.models.builders import build_model
    return prepare(build_model(model))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
