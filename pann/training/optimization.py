"""The optimiser and learning-rate schedule of a training config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, config: Any) -> list[dict]:
    """One group with ``config.weight_decay``, or, without ``config.decay_norm_and_bias``, a second
    group of the 1-d parameters (biases, norm scales and shifts) with no decay."""
    if config.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # biases and norm scales/shifts are 1-d
    return [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer(model: nn.Module, config: Any) -> torch.optim.Optimizer:
    """``config.optimizer`` (SGD, Nesterov SGD or AdamW) over :func:`parameter_groups`."""
    groups = parameter_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.optimizer == "nesterov")


def scheduler(opt: torch.optim.Optimizer, config: Any, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``config.schedule``, stepped once per optimiser step over ``config.epochs`` epochs."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[m * steps_per_epoch for m in config.milestones], gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
