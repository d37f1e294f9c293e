"""Training and fine-tuning of backbones, with the leakage-mitigation techniques.

:func:`train` runs a :class:`~pann.train_config.TrainConfig` (plain data, validated as a whole
before anything runs) and calls ``callback(epoch, metrics)`` after every epoch; a callback that
returns ``True`` stops training (the hook for Ray Tune reporting and early stopping).
"""

from __future__ import annotations

import logging
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
from pann.evaluate import count_correct
from pann.files import atomic_write
from pann.models import Classifier, build_model
from pann.techniques import ApproximationAwareReLU, NegativeNoiseReLU, RandomSlopeReLU
from pann.train_config import LEAKAGE_TREATMENTS, OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig

__all__ = ["LEAKAGE_TREATMENTS", "OPTIMIZERS", "SCHEDULES", "ConfigError", "TrainConfig", "TrainResult",
           "TrainingDiverged", "evaluate_loss_accuracy", "leakage_module", "mixup", "train"]

logger = logging.getLogger(__name__)


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
    """Mean cross-entropy and top-1 accuracy (a row of non-finite logits counts as wrong)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in data.batches(max(batch_size, 500)):
            logits = model(x.to(device)).float()
            loss += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += count_correct(logits, y)
    return loss / len(data), correct / len(data)


@dataclass
class _Loop:
    """What a training run updates step by step, and saves to and restores from its checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    device: torch.device
    use_amp: bool

    def save(self, path: Path, epoch: int, history: list[dict[str, float]]) -> None:
        state = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "history": history,
                 "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state()}
        with atomic_write(path) as temporary:
            torch.save(state, temporary)

    def resume(self, path: Path) -> tuple[list[dict[str, float]], int]:
        """Restore the state saved at ``path``; its history and the number of epochs done."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        logger.info("resuming from %s after epoch %d", path, state["epoch"])
        return state["history"], state["epoch"]


def _backbone_and_data(config: TrainConfig) -> tuple[Classifier, ImageSet, ImageSet]:
    """The backbone to train (pretrained when asked) and the (train, validation) split of the training set."""
    problems = config.problems()
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))
    try:
        backbone = build_model(config.model, NUM_CLASSES[config.dataset], weights=config.pretrained)
    except ValueError as exc:
        raise ConfigError(f"invalid training config: pretrained: {exc}") from exc
    train_set, validation = split_train(load_dataset(config.dataset, "train", config.data_dir),
                                        config.validation_size, config.seed)
    if config.train_limit:
        train_set = train_set.subset(slice(0, config.train_limit))
    return backbone, train_set, validation


def _train_epoch(loop: _Loop, train_set: ImageSet, config: TrainConfig, epoch: int, progress: bool) -> float:
    """One pass over ``train_set``; the mean training loss. Raises :class:`TrainingDiverged` on a non-finite loss."""
    loop.model.train()
    total_loss, seen = 0.0, 0
    batches = train_set.batches(config.batch_size, shuffle=True, augment=config.augment, generator=loop.generator)
    for x, y in tqdm(batches, total=-(-len(train_set) // config.batch_size),
                     desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress):
        x, y = x.to(loop.device), y.to(loop.device)
        with torch.autocast(loop.device.type, enabled=loop.use_amp):
            if config.mixup_alpha:
                x, targets = mixup(x, y, config.mixup_alpha, loop.generator, NUM_CLASSES[config.dataset])
                loss = F.cross_entropy(loop.model(x), targets)
            else:
                loss = F.cross_entropy(loop.model(x), y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {float(loss.detach())} in epoch {epoch + 1}; "
                                   "lower the learning rate (nothing was saved for this epoch)")
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.scheduler.step()
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
    return total_loss / seen


def train(config: TrainConfig, checkpoint: str | Path | None = None,
          callback: Callable[[int, dict[str, float]], bool | None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or fine-tune from ``config.pretrained``) and return the backbone with exact ReLUs.

    With ``checkpoint`` the state is saved there after every epoch and, if the file
    exists, training resumes from it. Raises :class:`TrainingDiverged` on a non-finite
    loss, before anything is written for that epoch.
    """
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = _seed_everything(config.seed)
    backbone, train_set, validation = _backbone_and_data(config)
    factory = leakage_module(config)
    model = replace_activations(backbone, factory, require_polynomial=False) if factory else backbone
    model = model.to(device)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config, -(-len(train_set) // config.batch_size))
    use_amp = config.amp and device.type == "cuda"
    loop = _Loop(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=use_amp), generator,
                 device, use_amp)
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.is_file():
        history, start_epoch = loop.resume(checkpoint)

    for epoch in range(start_epoch, config.epochs):
        train_loss = _train_epoch(loop, train_set, config, epoch, progress)
        val_loss, val_accuracy = evaluate_loss_accuracy(model, validation, config.batch_size, device)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                   "val_accuracy": val_accuracy, "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        if checkpoint:
            loop.save(checkpoint, epoch + 1, history)
        if callback is not None and callback(epoch + 1, metrics):
            break

    # The trained weights, back in a plain backbone with exact ReLUs.
    backbone.load_state_dict(model.state_dict())
    return TrainResult(backbone.cpu().eval(), history)
