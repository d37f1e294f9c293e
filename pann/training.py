"""Training and fine-tuning of backbones, with the leakage-mitigation techniques and recipes.

A :class:`~pann.training_config.TrainConfig` (re-exported here) is plain data, validated as a
whole before anything runs. :func:`train` runs the loop and calls ``callback(epoch, metrics)``
after every epoch; a callback that returns ``True`` stops training (the hook for Ray Tune
reporting and early stopping). With a precision schedule the metrics carry ``alpha``, the
mean training alpha of the epoch's steps; without validation images, ``val_*`` are NaN.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
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
from pann.data import NUM_CLASSES, ImageSet, load_dataset, split_train
from pann.distillation import Teacher, distillation_loss
from pann.models import Classifier, build_model
from pann.optimization import optimizer, scheduler
from pann.schedules import PrecisionSchedule
from pann.techniques import ApproximationAwareReLU, NegativeNoiseReLU, RandomSlopeReLU
from pann.training_config import LEAKAGE_TREATMENTS, ConfigError, TrainConfig

__all__ = ["ConfigError", "LEAKAGE_TREATMENTS", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written for that epoch."""


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


@dataclass
class _Run:
    """What one training run updates, step by step."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    device: torch.device
    teacher: Teacher | None
    precision: PrecisionSchedule | None

    def state(self, epoch: int, history: list[dict[str, float]]) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "history": history,
                "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state()}

    def restore(self, path: Path) -> tuple[list[dict[str, float]], int]:
        """Load a checkpoint written by :meth:`state`; its history and epoch."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        return state["history"], state["epoch"]


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _loss(run: _Run, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The batch loss: cross-entropy (on Mixup targets if set), or the distillation loss with a teacher."""
    targets = y
    if run.config.mixup_alpha:
        x, targets = mixup(x, y, run.config.mixup_alpha, run.generator, num_classes)
    logits = run.model(x)
    if run.teacher is None:
        return F.cross_entropy(logits, targets)
    return distillation_loss(logits, run.teacher(x), targets, run.config.distill_temperature,
                             run.config.distill_weight)


def _train_epoch(run: _Run, data: ImageSet, epoch: int, progress: bool) -> dict[str, float]:
    config, device = run.config, run.device
    run.model.train()
    total_loss, seen, alphas = 0.0, 0, []
    steps = -(-len(data) // config.batch_size)
    batches = data.batches(config.batch_size, shuffle=True, augment=config.augment, generator=run.generator)
    for step, (x, y) in enumerate(tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}",
                                       leave=False, disable=not progress)):
        if run.precision is not None:
            alphas.append(run.precision.step(epoch, step))
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, enabled=run.scaler.is_enabled()):
            loss = _loss(run, x, y, NUM_CLASSES[config.dataset])
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {float(loss.detach())} in epoch {epoch + 1}; "
                                   "lower the learning rate (nothing was saved for this epoch)")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
    metrics = {"epoch": epoch + 1, "train_loss": total_loss / seen, "lr": run.optimizer.param_groups[0]["lr"]}
    if alphas:
        metrics["alpha"] = sum(alphas) / len(alphas)  # the mean training alpha of the epoch's steps
    return metrics


def _networks(config: TrainConfig) -> tuple[Classifier, nn.Module, Teacher | None]:
    """The backbone, the network trained (the backbone with the leakage treatment) and the teacher."""
    num_classes = NUM_CLASSES[config.dataset]
    try:
        backbone = build_model(config.model, num_classes, weights=config.pretrained)
    except ValueError as exc:
        raise ConfigError(f"invalid training config: pretrained: {exc}") from exc
    factory = leakage_module(config)
    model = replace_activations(backbone, factory, require_polynomial=False) if factory else backbone
    teacher = Teacher(build_model(config.model, num_classes, weights=config.pretrained)) \
        if config.distill_weight > 0 else None
    return backbone, model, teacher


def _start(config: TrainConfig, steps_per_epoch: int) -> tuple[Classifier, _Run]:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = _seed_everything(config.seed)
    backbone, model, teacher = _networks(config)
    model = model.to(device)
    opt = optimizer(model, config)
    precision = None if config.alpha_start is None else PrecisionSchedule(
        model, config.alpha_start, config.alpha, config.epochs, steps_per_epoch, config.alpha_granularity)
    run = _Run(config, model, opt, scheduler(opt, config, steps_per_epoch),
               torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda"), generator, device,
               teacher, precision)
    if teacher is not None:
        teacher.network.to(device)
    return backbone, run


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
    train_set = load_dataset(config.dataset, "train", config.data_dir)
    validation = None
    if config.validation_size:
        train_set, validation = split_train(train_set, config.validation_size, config.seed)
    if config.train_limit:
        train_set = train_set.subset(slice(0, config.train_limit))
    backbone, run = _start(config, -(-len(train_set) // config.batch_size))
    checkpoint = Path(checkpoint) if checkpoint else None
    history, start_epoch = run.restore(checkpoint) if checkpoint and checkpoint.is_file() else ([], 0)
    for epoch in range(start_epoch, config.epochs):
        metrics = _train_epoch(run, train_set, epoch, progress)
        val_loss, val_accuracy = (evaluate_loss_accuracy(run.model, validation, config.batch_size, run.device)
                                  if validation is not None else (math.nan, math.nan))
        metrics.update(val_loss=val_loss, val_accuracy=val_accuracy)
        history.append(metrics)
        if checkpoint:
            _save(run.state(epoch + 1, history), checkpoint)
        if callback is not None and callback(epoch + 1, metrics):
            break
    # The trained weights, back in a plain backbone with exact ReLUs.
    backbone.load_state_dict(run.model.state_dict())
    return TrainResult(backbone.cpu().eval(), history)
