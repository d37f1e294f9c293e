"""Precision schedule for approximation-aware training: start at a higher alpha, end at the target.

:func:`alpha_at` is the schedule itself, a pure function of the training position;
:class:`PrecisionSchedule` applies it to the :class:`~pann.training.techniques.ApproximationAwareReLU`
modules of a network as training advances: one target for every layer, or a target per layer (progressive
lowering of a per-layer PANN: every layer steps down from the same start to its own alpha, SmartPAF's idea).
"""

from __future__ import annotations

import math

from collections.abc import Mapping

from torch import nn

from pann.approximation.catalog import relu_for_precision
from pann.training.techniques import ApproximationAwareReLU

SCHEDULE_UNITS = ("epoch", "step")


def alpha_at(position: int, total: int, start: float, target: float) -> float:
    """The training alpha at ``position`` (an epoch or a step, counted from 0) of ``total``.

    The alpha is lowered one bit at a time, from ``start`` down to ``target``, each level
    held for an equal share of training::

        levels = ceil(start - target) + 1
        alpha(k) = max(target, start - floor(k * levels / total))    (k < total - 1)
        alpha(total - 1) = target

    so with ``total >= levels`` training starts at ``start`` and its last share runs at ``target``
    (e.g. 9 -> 7 over 6 steps: 9, 9, 8, 8, 7, 7). With fewer positions than levels some levels
    are skipped, and the last position still runs at ``target`` (over 2 epochs: 9, 7).
    ``start <= target`` gives ``target`` throughout. Pure: the same arguments give the same
    alpha, so a resumed run follows the same schedule.

    Raises ``ValueError`` for a position outside ``0..total-1``.
    """
    if not (isinstance(total, int) and total >= 1 and isinstance(position, int) and 0 <= position < total):
        raise ValueError(f"schedule position {position!r} outside 0..{total!r} - 1")
    if start <= target or position == total - 1:
        return float(target)
    levels = math.ceil(start - target) + 1
    return float(max(target, start - (position * levels) // total))


class PrecisionSchedule:
    """Sets the alpha of every approximation-aware ReLU of ``model`` from :func:`alpha_at`.

    ``target`` is one alpha for every layer, or a mapping from the names of ``model``'s approximation-aware
    ReLUs to their own targets (every one named). ``granularity='epoch'`` moves once per epoch (position =
    epoch), ``'step'`` at every optimiser step (position = global step).
    """

    def __init__(self, model: nn.Module, start: float, target: float | Mapping[str, float], epochs: int,
                 steps_per_epoch: int, granularity: str = "epoch"):
        if granularity not in SCHEDULE_UNITS:
            raise ValueError(f"precision schedule granularity must be one of {', '.join(SCHEDULE_UNITS)}, "
                             f"got {granularity!r}")
        modules = {n: m for n, m in model.named_modules() if isinstance(m, ApproximationAwareReLU)}
        if not modules:
            raise ValueError("a precision schedule needs approximation-aware ReLUs in the model")
        targets = target if isinstance(target, Mapping) else dict.fromkeys(modules, target)
        missing = sorted(set(modules) - set(targets))
        if missing:
            raise ValueError(f"precision schedule: no target alpha for {', '.join(missing)}")
        self.targets = {modules[n]: float(targets[n]) for n in modules}
        self.start, self.granularity = float(start), granularity
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.current: dict[nn.Module, float] = {}

    def step(self, epoch: int, step_in_epoch: int) -> float:
        """Apply the alphas of this step (swapping a layer's polynomial only when its alpha changes); return
        their mean."""
        if self.granularity == "epoch":
            position, total = epoch, self.epochs
        else:
            position, total = epoch * self.steps_per_epoch + step_in_epoch, self.epochs * self.steps_per_epoch
        for module, target in self.targets.items():
            alpha = alpha_at(position, total, self.start, target)
            if alpha != self.current.get(module):
                module.set_approximation(relu_for_precision(alpha))
                self.current[module] = alpha
        return sum(self.current.values()) / len(self.current)
