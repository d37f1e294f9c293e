"""Training-time treatments of the leakage a polynomial ReLU produces on negative inputs.

A polynomial ReLU ``B r(x / B)`` differs from ReLU by an even error of size up to
``B 2^-alpha``; on negative inputs, where ReLU is exactly 0, that error is pure
leakage. Each module below is an exact ReLU at evaluation time and perturbs only the
training forward pass, so that the trained network tolerates the leakage:

* :class:`NegativeNoiseReLU` (a): ``ReLU(x) + s * N(0, 1)`` on ``x < 0``, with ``s`` tied
  to the target precision (``s = B 2^-alpha``, ``B`` the running max of ``|x|``) or to
  the input's statistics (``s = factor * std(x)``).
* :class:`RandomSlopeReLU` (b): ``ReLU(x) + a x`` on ``x < 0`` with ``a ~ U(-s, s)`` per
  element, zero mean.
* :class:`ApproximationAwareReLU` (c): the forward value of the true polynomial of the
  target alpha, ``B r(x / B)``, with the gradient of the exact ReLU (straight-through).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pann.approximation.composite import ReluApproximation
from pann.conversion.modules import PolyReLU


class _RunningRange(nn.Module):
    """Tracks ``B``, the largest ``|x|`` seen in training (the interval a PANN will use)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("max_abs", torch.zeros(()), persistent=False)

    def update_range(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.max_abs = torch.maximum(self.max_abs, x.detach().abs().max().float())
        return self.max_abs


class NegativeNoiseReLU(_RunningRange):
    """ReLU plus Gaussian noise on negative inputs during training.

    ``mode='precision'``: noise std ``B 2^-alpha`` (``B`` the running max of ``|x|``);
    ``mode='std'``: noise std ``factor * std(x)`` of the batch. Exact ReLU in eval mode.
    """

    def __init__(self, mode: str = "precision", alpha: float = 8.0, factor: float = 0.01):
        super().__init__()
        if mode not in ("precision", "std"):
            raise ValueError(f"noise mode must be 'precision' or 'std', got {mode!r}")
        self.mode, self.alpha, self.factor = mode, float(alpha), float(factor)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "precision":
            return self.update_range(x) * 2.0**-self.alpha
        return self.factor * x.detach().std()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.relu(x)
        noise = torch.randn_like(x) * self.scale(x).to(x.dtype)
        return F.relu(x) + noise * (x < 0)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, alpha={self.alpha:g}" if self.mode == "precision" else f"mode=std, factor={self.factor:g}"


class RandomSlopeReLU(nn.Module):
    """ReLU plus a zero-mean random slope ``a ~ U(-slope, slope)`` on negative inputs in training."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        if not slope > 0:
            raise ValueError(f"random slope must be positive, got {slope}")
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.relu(x)
        a = (torch.rand_like(x) * 2 - 1) * self.slope
        return F.relu(x) + a * x * (x < 0)

    def extra_repr(self) -> str:
        return f"slope={self.slope:g}"


class ApproximationAwareReLU(_RunningRange):
    """Forward value of the polynomial ReLU of ``approximation`` on ``[-B, B]``, gradient of ReLU.

    ``B`` is ``margin`` times the running max of ``|x|``. Exact ReLU in eval mode, so the
    trained backbone is then converted like any other.
    """

    def __init__(self, approximation: ReluApproximation, margin: float = 1.0):
        super().__init__()
        self.margin = float(margin)
        self.polynomial = PolyReLU(approximation, 1.0)

    def set_approximation(self, approximation: ReluApproximation) -> None:
        """Train against ``approximation`` from now on (the precision schedule's hook)."""
        self.polynomial = PolyReLU(approximation, 1.0).to(self.max_abs.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = F.relu(x)
        if not self.training:
            return exact
        with torch.no_grad():
            self.polynomial.bound.fill_(max(float(self.update_range(x)) * self.margin, 1e-6))
            leakage = self.polynomial(x) - exact
        return exact + leakage

    def extra_repr(self) -> str:
        return f"{self.polynomial.approximation.name}, margin={self.margin:g}"
