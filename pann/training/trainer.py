"""Training and fine-tuning of backbones, with the leakage-mitigation techniques.

:func:`train` runs a :class:`~pann.training.config.TrainConfig` (plain data, validated as a whole
before anything runs) and calls ``callback(epoch, metrics)`` after every epoch; a callback that
returns ``True`` stops training (the hook for Ray Tune reporting and early stopping). With a
precision schedule the metrics carry ``alpha``, the mean training alpha of the epoch's steps;
without validation images (``validation_size=0``), ``val_*`` are NaN.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import prepare, replace_activations
from pann.data import NUM_CLASSES, ImageSet, load_dataset, split_train
from pann.training.distillation import Teacher, distillation_loss
from pann.evaluate import accuracies_and_losses
from pann.training.checkpoints import CheckpointError  # noqa: F401 (re-exported)
from pann.training.checkpoints import APPROXIMATION_FIELDS, read_checkpoint
from pann.files import atomic_write
from pann.conversion.groups import alphas_by_layer
from pann.models.builders import Classifier, build_model
from pann.training.optimization import optimizer as _optimizer
from pann.training.optimization import scheduler as _scheduler
from pann.training.schedules import PrecisionSchedule
from pann.training.techniques import ApproximationAwareReLU, NegativeNoiseReLU, RandomSlopeReLU
from pann.training.config import LEAKAGE_TREATMENTS, OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig

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


def _set_layer_alphas(model: nn.Module, backbone: nn.Module, config: TrainConfig) -> dict[str, float]:
    """Give every approximation-aware ReLU of ``model`` its alpha of ``config.layer_alphas``; return them."""
    alphas = alphas_by_layer(prepare(backbone), config.layer_alphas, config.alpha)
    for name, module in model.named_modules():
        if isinstance(module, ApproximationAwareReLU):
            module.set_approximation(relu_for_precision(alphas[name]))
    logger.info("approximation-aware training per layer: %s", alphas)
    return alphas


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
    """Mean cross-entropy and top-1 accuracy (:func:`pann.evaluate.accuracies_and_losses`: a row of non-finite
    logits counts as wrong, with the largest loss)."""
    accuracy, loss = accuracies_and_losses([model], data, max(batch_size, 500), device)[0]
    return loss, accuracy


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
    teacher: Teacher | None = None
    precision: PrecisionSchedule | None = None

    def save(self, path: Path, epoch: int, history: list[dict[str, float]], config: dict[str, Any]) -> None:
        state = {"epoch": epoch, "config": config, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "history": history,
                 "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state()}
        with atomic_write(path) as temporary:
            torch.save(state, temporary)

    def resume(self, path: Path, config: dict[str, Any],
               may_change: tuple[str, ...] = ()) -> tuple[list[dict[str, float]], int]:
        """Restore the state saved at ``path``; its history and the number of epochs done. Raises
        :class:`CheckpointError` unless ``config`` wrote it (but for the fields in ``may_change``)."""
        state = read_checkpoint(path, self.device, config, may_change)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} holds another model's state: "
                                  f"{str(exc).strip().splitlines()[-1].strip()}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        logger.info("resuming from %s after epoch %d", path, state["epoch"])
        return state["history"], state["epoch"]


def _backbone_and_data(config: TrainConfig) -> tuple[Classifier, ImageSet, ImageSet | None]:
    """The backbone to train (from ``initial``, else ``pretrained``, when asked) and the (train, validation) split
    of the training set (no validation images with ``validation_size=0``)."""
    problems = config.problems()
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))
    try:
        backbone = build_model(config.model, NUM_CLASSES[config.dataset], weights=config.initial or config.pretrained)
    except ValueError as exc:
        raise ConfigError(f"invalid training config: {'initial' if config.initial else 'pretrained'}: {exc}") from exc
    train_set, validation = load_dataset(config.dataset, "train", config.data_dir), None
    if config.validation_size:
        train_set, validation = split_train(train_set, config.validation_size, config.seed)
    if config.train_limit:
        train_set = train_set.subset(slice(0, config.train_limit))
    return backbone, train_set, validation


def _loss(loop: _Loop, config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch loss: cross-entropy (on Mixup targets if set), or the distillation loss with a teacher."""
    targets = y
    if config.mixup_alpha:
        x, targets = mixup(x, y, config.mixup_alpha, loop.generator, NUM_CLASSES[config.dataset])
    logits = loop.model(x)
    if loop.teacher is None:
        return F.cross_entropy(logits, targets)
    return distillation_loss(logits, loop.teacher(x), targets, config.distill_temperature, config.distill_weight)


def _train_epoch(loop: _Loop, train_set: ImageSet, config: TrainConfig, epoch: int,
                 progress: bool) -> dict[str, float]:
    """One pass over ``train_set``; its mean training loss (and mean training alpha under a precision
    schedule). Raises :class:`TrainingDiverged` on a non-finite loss."""
    loop.model.train()
    total_loss, seen, alphas = 0.0, 0, []
    if config.epoch_images:  # a fresh draw of the training images every epoch
        train_set = train_set.subset(torch.randperm(len(train_set), generator=loop.generator)[:config.epoch_images])
    batches = train_set.batches(config.batch_size, shuffle=True, augment=config.augment, generator=loop.generator)
    for step, (x, y) in enumerate(tqdm(batches, total=-(-len(train_set) // config.batch_size),
                                       desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)):
        if loop.precision is not None:
            alphas.append(loop.precision.step(epoch, step))
        x, y = x.to(loop.device), y.to(loop.device)
        with torch.autocast(loop.device.type, enabled=loop.use_amp):
            loss = _loss(loop, config, x, y)
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
    return {"train_loss": total_loss / seen, **({"alpha": sum(alphas) / len(alphas)} if alphas else {})}


def _recipes(config: TrainConfig, model: nn.Module, steps_per_epoch: int, device: torch.device,
             layer_alphas: dict[str, float] | None) -> tuple[Teacher | None, PrecisionSchedule | None]:
    """The distillation teacher (the pretrained backbone) and the precision schedule (to ``config.alpha``, or
    to each layer's own alpha), where the config asks."""
    teacher = None
    if config.distill_weight > 0:
        teacher = Teacher(build_model(config.model, NUM_CLASSES[config.dataset], weights=config.pretrained).to(device))
    precision = None if config.alpha_start is None else PrecisionSchedule(
        model, config.alpha_start, layer_alphas or config.alpha, config.epochs, steps_per_epoch,
        config.alpha_granularity)
    return teacher, precision


def train(config: TrainConfig, checkpoint: str | Path | None = None,
          callback: Callable[[int, dict[str, float]], bool | None] | None = None,
          progress: bool = True, other_approximation: bool = False) -> TrainResult:
    """Train (or fine-tune from ``config.initial`` or ``config.pretrained``) and return the backbone with exact ReLUs.

    With ``checkpoint`` the state is saved there after every epoch and, if the file
    exists, training resumes from it. With ``other_approximation`` that file may come from a run at other
    polynomials (``alpha``, ``layer_alphas``: population-based training's exploit), whose weights, optimizer and
    schedule go on at this config's. Raises :class:`TrainingDiverged` on a non-finite
    loss, before anything is written for that epoch.
    """
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = _seed_everything(config.seed)
    backbone, train_set, validation = _backbone_and_data(config)
    factory = leakage_module(config)
    model = replace_activations(backbone, factory, require_polynomial=False) if factory else backbone
    layer_alphas = _set_layer_alphas(model, backbone, config) if config.layer_alphas else None
    model = model.to(device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = -(-min(len(train_set), config.epoch_images or len(train_set)) // config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    use_amp = config.amp and device.type == "cuda"
    loop = _Loop(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=use_amp), generator,
                 device, use_amp, *_recipes(config, model, steps_per_epoch, device, layer_alphas))
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    recorded = dataclasses.asdict(config)
    if checkpoint and checkpoint.is_file():
        history, start_epoch = loop.resume(checkpoint, recorded,
                                           APPROXIMATION_FIELDS if other_approximation else ())

    for epoch in range(start_epoch, config.epochs):
        trained = _train_epoch(loop, train_set, config, epoch, progress)
        val_loss, val_accuracy = (evaluate_loss_accuracy(model, validation, config.batch_size, device)
                                  if validation is not None else (math.nan, math.nan))
        metrics = {"epoch": epoch + 1, **trained, "val_loss": val_loss, "val_accuracy": val_accuracy,
                   "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        if checkpoint:
            loop.save(checkpoint, epoch + 1, history, recorded)
        if callback is not None and callback(epoch + 1, metrics):
            break

    # The trained weights, back in a plain backbone with exact ReLUs.
    backbone.load_state_dict(model.state_dict())
    return TrainResult(backbone.cpu().eval(), history)
