"""PyTorch modules of a PANN: range observers and their polynomial replacements.

The flow follows post-training quantization: :class:`ObservedReLU` and
:class:`ObservedMaxPool2d` compute the exact operation while recording the largest
``|x|`` they see on calibration data; :class:`PolyReLU` and :class:`PolyMaxPool2d`
replace them with the polynomial approximation scaled to an interval ``[-B, B]``.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch._dynamo
import torch._inductor.exc
import torch.nn.functional as F
from torch import nn

from pann.approximation.composite import ReluApproximation


_CHUNK = 1 << 16  # elements per eager chunk: keeps the Clenshaw temporaries in cache


def odd_chebyshev(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_k c_k T_{2k+1}(x)`` for ``coefficients = (c_0, c_1, ...)``.

    Uses ``T_{2k+1}(x) = x V_k(2x^2 - 1)`` with ``V_k`` the Chebyshev polynomials of
    the third kind, summed by Clenshaw's recurrence ``b_k = c_k + 2y b_{k+1} - b_{k+2}``,
    ``sum = b_0 - b_1``: half the steps of a full Chebyshev series, and backward
    stable like it (error about ``n eps max|b_k|`` for ``|x| <= 1``).
    """
    two_y = 4 * x * x - 2
    b1, b2 = torch.zeros_like(x), torch.zeros_like(x)
    for k in range(coefficients.shape[0] - 1, -1, -1):
        b1, b2 = coefficients[k] + two_y * b1 - b2, b1
    return x * (b1 - b2)


def chebyshev(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_k c_k T_k(x)`` by Clenshaw's recurrence."""
    two_x = 2 * x
    b1, b2 = torch.zeros_like(x), torch.zeros_like(x)
    for k in range(coefficients.shape[0] - 1, 0, -1):
        b1, b2 = coefficients[k] + two_x * b1 - b2, b1
    return coefficients[0] + x * b1 - b2


def relu_polynomial(x: torch.Tensor, bound: torch.Tensor, widths: list[torch.Tensor],
                    coefficients: list[torch.Tensor], composite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``B r(x / B)`` for the approximation ``r`` given by its stages, and the number of
    inputs with ``|x| > B``.

    Composite: ``r(t) = t (1 + p(t)) / 2`` with ``p`` the odd stages applied in turn,
    stage ``i`` being ``sum_k c_k T_{2k+1}(u / width_i)``. Direct: ``r`` is the one
    full Chebyshev series. Pure tensor code, so that ``torch.compile`` fuses it into
    one pass over memory.
    """
    outside = (x.abs() > bound).sum()
    t = x / bound
    if not composite:
        return bound * chebyshev(t, coefficients[0]), outside
    p = t
    for width, coef in zip(widths, coefficients):
        p = odd_chebyshev(p / width, coef)
    return x * (1 + p) / 2, outside


# Compiler failures (no C++ compiler, an unsupported platform): these, and only these, fall back to eager.
_COMPILE_ERRORS = (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.TorchDynamoException,
                   torch._inductor.exc.InductorError, torch._inductor.exc.CppCompileError)
# One compiled entry per degree-set shape, dtype and grad mode: more than dynamo's default of 8. Raised only
# around our own calls (a scoped config patch), never for the rest of the process.
_RECOMPILE_LIMIT = 256
_compile_failure: str | None = None  # why compilation failed in this process, once it has


@functools.lru_cache(maxsize=None)
def _compiled_kernel():
    """``relu_polynomial`` compiled by TorchInductor: one fused kernel per degree set (compiled lazily)."""
    return torch.compile(relu_polynomial, dynamic=True)


def _dynamo_limit_patch():
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: max(getattr(config, name), _RECOMPILE_LIMIT)})


def _run_compiled(*args):
    """The compiled kernel's result, or ``None`` once the compiler has failed in this process.

    Only compiler errors fall back (with a warning naming the error, once); anything else, out of
    memory included, propagates.
    """
    global _compile_failure
    if _compile_failure is not None:
        return None
    try:
        with _dynamo_limit_patch():
            return _compiled_kernel()(*args)
    except _COMPILE_ERRORS as exc:
        _compile_failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        warnings.warn(f"torch.compile failed ({_compile_failure}); PANN layers fall back to eager evaluation "
                      "(pass compiled=False to skip the attempt)", RuntimeWarning, stacklevel=4)
        return None


class _PolynomialReLU(nn.Module):
    """ReLU on ``[-B, B]`` as ``B r(x / B)`` for a :class:`ReluApproximation` ``r``.

    Evaluates in ``dtype`` and returns the input's dtype. ``compiled`` (default) runs
    :func:`relu_polynomial` as one fused TorchInductor kernel; otherwise it runs eagerly,
    chunk by chunk without autograd so that its temporaries stay in cache (the float64
    eager path is the reference). Counts the inputs outside ``[-B, B]``, where the
    polynomial diverges from ReLU.
    """

    def __init__(self, approximation: ReluApproximation, bound: float, dtype: torch.dtype = torch.float32,
                 compiled: bool = True):
        super().__init__()
        if not bound > 0:
            raise ValueError(f"interval bound B must be positive, got {bound}")
        self.approximation = approximation
        self.dtype = dtype
        self.compiled = compiled
        self.composite = approximation.family == "composite"
        self.register_buffer("bound", torch.tensor(float(bound), dtype=dtype), persistent=False)
        self._stage_names = []
        for i, stage in enumerate(approximation.stages):
            # Odd stages keep only their T_1, T_3, ... coefficients.
            coef = stage.coefficients[1::2] if self.composite else stage.coefficients
            self.register_buffer(f"coefficients{i}", torch.tensor(coef, dtype=dtype), persistent=False)
            self.register_buffer(f"width{i}", torch.tensor(stage.width, dtype=dtype), persistent=False)
            self._stage_names.append((f"width{i}", f"coefficients{i}"))
        self.register_buffer("out_of_range", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        widths = [getattr(self, w) for w, _ in self._stage_names]
        coefficients = [getattr(self, c) for _, c in self._stage_names]
        if self.compiled:
            result = _run_compiled(x, self.bound, widths, coefficients, self.composite)
            if result is not None:
                return result
        if torch.is_grad_enabled() and x.requires_grad:
            return relu_polynomial(x, self.bound, widths, coefficients, self.composite)
        flat = x.reshape(-1)
        out = torch.empty_like(flat)
        outside = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, flat.numel(), _CHUNK):
            out[start:start + _CHUNK], count = relu_polynomial(flat[start:start + _CHUNK], self.bound, widths,
                                                               coefficients, self.composite)
            outside += count
        return out.view_as(x), outside

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        y, outside = self._evaluate(x.to(self.dtype))
        with torch.no_grad():
            self.out_of_range += outside
            self.seen += x.numel()
        return y.to(x.dtype)


class PolyReLU(_PolynomialReLU):
    """Polynomial replacement of ``ReLU`` calibrated to ``[-B, B]``.

    ``offset`` (per channel, dimension 1; set by :func:`pann.conversion.corrections.compensate_leakage`)
    is subtracted from the output: a constant, so it folds into the next layer's bias.
    """

    offset: torch.Tensor | None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("offset", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(x)
        if self.offset is not None:
            y = y - self.offset.view(1, -1, *([1] * (x.ndim - 2))).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{self.approximation.name}, B={self.bound.item():.4g}, alpha={self.approximation.precision:.2f}"


class PolyMaxPool2d(_PolynomialReLU):
    """Max-pool as a tournament of pairwise ``max(a, b) = b + ReLU(a - b)``.

    ``bound`` bounds ``|a - b|``, i.e. twice the input range. Padding takes the value
    ``-bound / 2``, the bottom of the input range, so padded positions never win and
    stay inside the polynomial's interval.
    """

    def __init__(self, approximation: ReluApproximation, bound: float, kernel_size, stride=None,
                 padding=0, dtype: torch.dtype = torch.float32, compiled: bool = True):
        super().__init__(approximation, bound, dtype, compiled)
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride if stride is not None else kernel_size)
        self.padding = nn.modules.utils._pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=-self.bound.item() / 2)
        windows = x.unfold(2, kh, sh).unfold(3, kw, sw).flatten(-2)
        while windows.shape[-1] > 1:
            half = windows.shape[-1] // 2
            a, b, rest = windows[..., :half], windows[..., half:2 * half], windows[..., 2 * half:]
            windows = torch.cat([b + self.relu(a - b), rest], dim=-1)
        return windows[..., 0]

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"{self.approximation.name}, B={self.bound.item():.4g}")


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
