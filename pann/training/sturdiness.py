"""Sturdiness: how much accuracy a network keeps when it becomes a PANN, as two numbers of its curve."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sturdiness:
    """``lowest_alpha``: the lowest alpha within ``tolerance`` of the backbone (None if no alpha is);
    ``area``: the area under accuracy (a fraction) over alpha on ``span``, at most the span's width."""

    lowest_alpha: float | None
    area: float
    span: tuple[float, float]


def sturdiness(curve: Mapping[float, float], backbone: float, tolerance: float = 0.01,
               span: tuple[float, float] = (5.0, 10.0)) -> Sturdiness:
    r"""The sturdiness of a network from its accuracy-vs-alpha ``curve`` and its own ``backbone`` accuracy.

    * lowest alpha: :math:`\min\{\alpha : a(\alpha) \ge a_{\text{backbone}} - \text{tolerance}\}` over the
      alphas of ``curve`` (accuracies are fractions, so ``tolerance=0.01`` is one point);
    * area: :math:`\int_{\alpha_0}^{\alpha_1} a(\alpha)\,d\alpha` by the trapezoidal rule over the curve's
      alphas in ``span = (alpha_0, alpha_1)``; a network that keeps accuracy 1 everywhere scores
      ``alpha_1 - alpha_0``, so ``area / (alpha_1 - alpha_0)`` is the mean accuracy over the span.

    Pure: depends on its arguments only. Raises ``ValueError`` when the curve lacks either end of
    ``span`` (the area would silently cover less), or holds an accuracy outside ``[0, 1]``.
    """
    low, high = span
    if not low < high:
        raise ValueError(f"sturdiness span must have low < high, got {span}")
    bad = [a for a, acc in curve.items() if not 0 <= acc <= 1]
    if bad:
        raise ValueError(f"accuracies must be fractions in [0, 1]; not at alpha {', '.join(f'{a:g}' for a in bad)}")
    missing = [end for end in span if end not in curve]
    if missing:
        raise ValueError(f"the curve has no point at alpha {', '.join(f'{m:g}' for m in missing)} "
                         f"(needed for the area over {low:g}..{high:g})")
    kept = [alpha for alpha, acc in curve.items() if acc >= backbone - tolerance]
    inside = sorted(alpha for alpha in curve if low <= alpha <= high)
    area = float(np.trapezoid([curve[a] for a in inside], inside))
    return Sturdiness(min(kept) if kept else None, area, (float(low), float(high)))
