"""Precision schedule for approximation-aware training: start at a higher alpha, end at the target.

:func:`alpha_at` is the schedule itself, a pure function of the training position;
:class:`PrecisionSchedule` applies it to the :class:`~pann.training.techniques.ApproximationAwareReLU`
modules of a network as training advances.
"""

from __future__ import annotations

import math

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

    ``granularity='epoch'`` moves once per epoch (position = epoch), ``'step'`` at every
    optimiser step (position = global step).
    """

    def __init__(self, model: nn.Module, start: float, target: float, epochs: int, steps_per_epoch: int,
                 granularity: str = "epoch"):
        if granularity not in SCHEDULE_UNITS:
            raise ValueError(f"precision schedule granularity must be one of {', '.join(SCHEDULE_UNITS)}, "
                             f"got {granularity!r}")
        self.modules = [m for m in model.modules() if isinstance(m, ApproximationAwareReLU)]
        if not self.modules:
            raise ValueError("a precision schedule needs approximation-aware ReLUs in the model")
        self.start, self.target, self.granularity = float(start), float(target), granularity
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.current: float | None = None

    def step(self, epoch: int, step_in_epoch: int) -> float:
        """Apply the alpha of this step (swapping the polynomials only when it changes); return it."""
        if self.granularity == "epoch":
            alpha = alpha_at(epoch, self.epochs, self.start, self.target)
        else:
            alpha = alpha_at(epoch * self.steps_per_epoch + step_in_epoch, self.epochs * self.steps_per_epoch,
                             self.start, self.target)
        if alpha != self.current:
            approximation = relu_for_precision(alpha)
            for module in self.modules:
                module.set_approximation(approximation)
            self.current = alpha
        return alpha
