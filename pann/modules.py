"""PyTorch modules of a PANN: range observers and their polynomial replacements.

The flow follows post-training quantization: :class:`ObservedReLU` and
:class:`ObservedMaxPool2d` compute the exact operation while recording the largest
``|x|`` they see on calibration data; :class:`PolyReLU` and :class:`PolyMaxPool2d`
replace them with the polynomial approximation scaled to an interval ``[-B, B]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pann.approximation import ReluApproximation


_CHUNK = 1 << 16  # elements per chunk: keeps the Clenshaw temporaries in cache


def _inplace(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


def odd_chebyshev(x: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_k c_k T_{2k+1}(x)`` for ``coefficients = (c_0, c_1, ...)``.

    Uses ``T_{2k+1}(x) = x V_k(2x^2 - 1)`` with ``V_k`` the Chebyshev polynomials of
    the third kind, summed by Clenshaw's recurrence ``b_k = c_k + 2y b_{k+1} - b_{k+2}``,
    ``sum = b_0 - b_1``: half the steps of a full Chebyshev series, and backward
    stable like it (error about ``n eps max|b_k|`` for ``|x| <= 1``). Works in place
    on its temporaries unless autograd needs them.
    """
    inplace = _inplace(x)
    two_y = 4 * x * x - 2
    b1, b2 = torch.zeros_like(x), torch.zeros_like(x)
    for c in reversed(coefficients):
        b2 = b2.neg_().add_(c).addcmul_(two_y, b1) if inplace else torch.addcmul(c - b2, two_y, b1)
        b1, b2 = b2, b1
    return x * (b1 - b2)


def chebyshev(x: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_k c_k T_k(x)`` by Clenshaw's recurrence."""
    inplace = _inplace(x)
    two_x = 2 * x
    b1, b2 = torch.zeros_like(x), torch.zeros_like(x)
    for c in reversed(coefficients[1:]):
        b2 = b2.neg_().add_(c).addcmul_(two_x, b1) if inplace else torch.addcmul(c - b2, two_x, b1)
        b1, b2 = b2, b1
    return coefficients[0] + x * b1 - b2


class _PolynomialReLU(nn.Module):
    """ReLU on ``[-B, B]`` as ``B r(x / B)`` for a :class:`ReluApproximation` ``r``.

    Evaluates in ``dtype`` and returns the input's dtype; without autograd it works
    chunk by chunk so that the temporaries stay in cache. Counts the inputs outside
    ``[-B, B]``, where the polynomial diverges from ReLU.
    """

    def __init__(self, approximation: ReluApproximation, bound: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not bound > 0:
            raise ValueError(f"interval bound B must be positive, got {bound}")
        self.approximation = approximation
        self.bound = float(bound)
        self.dtype = dtype
        composite = approximation.family == "composite"
        # Odd stages keep only their T_1, T_3, ... coefficients.
        self._stages = [(s.width, list(s.coefficients[1::2] if composite else s.coefficients))
                        for s in approximation.stages]
        self.register_buffer("out_of_range", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    def _relu_values(self, x: torch.Tensor) -> torch.Tensor:
        t = x / self.bound
        if self.approximation.family != "composite":
            return self.bound * chebyshev(t, self._stages[0][1])
        p = t
        for width, coefficients in self._stages:
            p = odd_chebyshev(p / width, coefficients)
        return x * (1 + p) / 2

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.out_of_range += (x.abs() > self.bound).sum()
            self.seen += x.numel()
        values = x.to(self.dtype)
        if not _inplace(values):
            return self._relu_values(values).to(x.dtype)
        flat = values.reshape(-1)
        out = torch.empty_like(flat)
        for start in range(0, flat.numel(), _CHUNK):
            out[start:start + _CHUNK] = self._relu_values(flat[start:start + _CHUNK])
        return out.view_as(x).to(x.dtype)


class PolyReLU(_PolynomialReLU):
    """Polynomial replacement of ``ReLU`` calibrated to ``[-B, B]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)

    def extra_repr(self) -> str:
        return f"{self.approximation.name}, B={self.bound:.4g}, alpha={self.approximation.precision:.2f}"


class PolyMaxPool2d(_PolynomialReLU):
    """Max-pool as a tournament of pairwise ``max(a, b) = b + ReLU(a - b)``.

    ``bound`` bounds ``|a - b|``, i.e. twice the input range. Padding takes the value
    ``-bound / 2``, the bottom of the input range, so padded positions never win and
    stay inside the polynomial's interval.
    """

    def __init__(self, approximation: ReluApproximation, bound: float, kernel_size, stride=None,
                 padding=0, dtype: torch.dtype = torch.float32):
        super().__init__(approximation, bound, dtype)
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride if stride is not None else kernel_size)
        self.padding = nn.modules.utils._pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=-self.bound / 2)
        windows = x.unfold(2, kh, sh).unfold(3, kw, sw).flatten(-2)
        while windows.shape[-1] > 1:
            half = windows.shape[-1] // 2
            a, b, rest = windows[..., :half], windows[..., half:2 * half], windows[..., 2 * half:]
            windows = torch.cat([b + self.relu(a - b), rest], dim=-1)
        return windows[..., 0]

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"{self.approximation.name}, B={self.bound:.4g}")


class _RangeObserver(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("max_abs", torch.zeros(()), persistent=False)

    def observe(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.max_abs = torch.maximum(self.max_abs, x.detach().abs().max().to(self.max_abs))


class ObservedReLU(_RangeObserver):
    """Exact ReLU that records the largest ``|x|`` of its inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe(x)
        return F.relu(x)


class ObservedMaxPool2d(_RangeObserver):
    """Exact max-pool that records the largest ``|x|`` of its inputs."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
