"""Training and fine-tuning of backbones, with the leakage-mitigation techniques.

A :class:`TrainConfig` is plain data, validated as a whole before anything runs
(:func:`TrainConfig.from_dict` reports every bad field at once). :func:`train` runs
the loop and calls ``callback(epoch, metrics)`` after every epoch; a callback that
returns ``True`` stops training (the hook for Ray Tune reporting and early stopping).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pann.catalog import relu_for_precision
from pann.convert import replace_activations
from pann.data import DATASETS, NUM_CLASSES, ImageSet, load_dataset, split_train
from pann.models import Classifier, build_model, model_names
from pann.techniques import ApproximationAwareReLU, NegativeNoiseReLU, RandomSlopeReLU

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
LEAKAGE_TREATMENTS = ("none", "noise", "random-slope", "approximation-aware")


class ConfigError(ValueError):
    """Invalid configuration; the message names every bad field."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written for that epoch."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. ``leakage`` picks the negative-input treatment:

    * ``noise``: Gaussian noise on negative inputs, std ``B 2^-alpha`` (``noise_mode='precision'``)
      or ``noise_factor * std(x)`` (``noise_mode='std'``);
    * ``random-slope``: slope ``U(-slope, slope)`` on negative inputs;
    * ``approximation-aware``: the true polynomial of ``alpha`` in the forward pass,
      straight-through gradient, on ``[-B, B]`` with ``B = margin * running max |x|``.
    """

    model: str = "resnet20"
    dataset: str = "cifar10"
    data_dir: str | None = None
    pretrained: str | None = None
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
    validation_size: int = 5000
    train_limit: int | None = None
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
        need(isinstance(self.validation_size, int) and self.validation_size >= 1, "validation_size",
             "must be an integer >= 1")
        need(self.train_limit is None or isinstance(self.train_limit, int) and self.train_limit >= 1,
             "train_limit", "must be a positive integer or null")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            p.append(f"pretrained: weights file not found ({self.pretrained!r})")
        return p


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainResult:
    model: Classifier
    history: list[dict[str, float]] = field(default_factory=list)


def leakage_module(config: TrainConfig) -> Callable[[], nn.Module] | None:
    """Factory of the training-time ReLU replacement of ``config.leakage`` (None for plain ReLU)."""
    if config.leakage == "noise":
        return lambda: NegativeNoiseReLU(config.noise_mode, config.alpha, config.noise_factor)
    if config.leakage == "random-slope":
        return lambda: RandomSlopeReLU(config.slope)
    if config.leakage == "approximation-aware":
        approximation = relu_for_precision(config.alpha)
        return lambda: ApproximationAwareReLU(approximation, config.margin)
    return None


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    if config.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # biases and norm scales/shifts are 1-d
    return [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.optimizer == "nesterov")


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m * steps_per_epoch for m in config.milestones], gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator,
          num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): a ``Beta(alpha, alpha)`` blend of the batch with a permutation of itself.

    Returns the blended images and soft targets.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    targets = F.one_hot(y, num_classes).float()
    return lam * x + (1 - lam) * x[order], lam * targets + (1 - lam) * targets[order]


def evaluate_loss_accuracy(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in data.batches(max(batch_size, 500)):
            logits = model(x.to(device)).float()
            loss += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(1).cpu() == y).sum())
    return loss / len(data), correct / len(data)


def _checkpoint_state(model, optimizer, scheduler, scaler, epoch, history, generator) -> dict:
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "history": history,
            "torch_rng": torch.get_rng_state(), "generator": generator.get_state()}


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(config: TrainConfig, checkpoint: str | Path | None = None,
          callback: Callable[[int, dict[str, float]], bool | None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or fine-tune from ``config.pretrained``) and return the backbone with exact ReLUs.

    With ``checkpoint`` the state is saved there after every epoch and, if the file
    exists, training resumes from it. Raises :class:`TrainingDiverged` on a non-finite
    loss, before anything is written for that epoch.
    """
    problems = config.problems()
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = _seed_everything(config.seed)
    num_classes = NUM_CLASSES[config.dataset]
    try:
        backbone = build_model(config.model, num_classes, weights=config.pretrained)
    except ValueError as exc:
        raise ConfigError(f"invalid training config: pretrained: {exc}") from exc
    train_set, validation = split_train(load_dataset(config.dataset, "train", config.data_dir),
                                        config.validation_size, config.seed)
    if config.train_limit:
        train_set = train_set.subset(slice(0, config.train_limit))

    factory = leakage_module(config)
    model = replace_activations(backbone, factory, require_polynomial=False) if factory else backbone
    model = model.to(device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["generator"])

    for epoch in range(start_epoch, config.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        batches = train_set.batches(config.batch_size, shuffle=True, augment=config.augment, generator=generator)
        for x, y in tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                         leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, enabled=use_amp):
                if config.mixup_alpha:
                    x, targets = mixup(x, y, config.mixup_alpha, generator, num_classes)
                    loss = F.cross_entropy(model(x), targets)
                else:
                    loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {float(loss.detach())} in epoch {epoch + 1}; "
                                       "lower the learning rate (nothing was saved for this epoch)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
        val_loss, val_accuracy = evaluate_loss_accuracy(model, validation, config.batch_size, device)
        metrics = {"epoch": epoch + 1, "train_loss": total_loss / seen, "val_loss": val_loss,
                   "val_accuracy": val_accuracy, "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        if checkpoint:
            _save(_checkpoint_state(model, optimizer, scheduler, scaler, epoch + 1, history, generator), checkpoint)
        if callback is not None and callback(epoch + 1, metrics):
            break

    # The trained weights, back in a plain backbone with exact ReLUs.
    backbone.load_state_dict(model.state_dict())
    return TrainResult(backbone.cpu().eval(), history)
