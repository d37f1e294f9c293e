"""Minimax polynomial approximation by the Remez exchange algorithm.

Polynomials are kept in the Chebyshev basis of a symmetric domain ``[-w, w]``:
``p(x) = sum_k c_k T_k(x / w)``. The basis is well conditioned on the domain, so the
solver and the evaluation stay accurate in float64 for the degrees used here (<= 63).

A *parity* restricts the basis to odd (``T_1, T_3, ...``) or even (``T_0, T_2, ...``)
polynomials. On an interval ``[a, b]`` with ``0 <= a`` such a basis is a Haar system,
so the best approximation is characterised by equioscillation (Chebyshev's theorem):
with ``n`` basis functions the error ``p - f`` reaches its maximum modulus with
alternating signs at ``n + 1`` points of ``[a, b]``. Odd polynomials on ``[a, b]``
are the minimax approximations of an odd function on ``[-b, -a] U [a, b]``, which is
how the two-interval problem for sgn is solved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from numpy.polynomial import chebyshev as C

Parity = Literal["odd", "even"]

_GRID_POINTS = 2048
_ROUNDING = 1e-12  # errors below this (relative to max|f|) are float64 noise


class RemezError(ArithmeticError):
    """The exchange did not converge to an equioscillating solution."""


@dataclass(frozen=True)
class Minimax:
    """Result of :func:`minimax`.

    ``coef`` are full Chebyshev coefficients on ``[-width, width]`` (zeros where the
    parity excludes a term); ``error`` is ``max |p - f|`` on ``interval``;
    ``reference`` the final alternation points and ``levelled`` the ratio
    ``min |error at reference| / error`` (1 at exact equioscillation).
    """

    coef: np.ndarray
    width: float
    interval: tuple[float, float]
    error: float
    reference: np.ndarray
    levelled: float
    iterations: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.chebval(np.asarray(x, dtype=np.float64) / self.width, self.coef)


def basis_indices(degree: int, parity: Parity) -> np.ndarray:
    """Chebyshev indices allowed for a polynomial of ``degree`` with ``parity``."""
    start = 1 if parity == "odd" else 0
    if degree < start or (degree - start) % 2:
        raise ValueError(f"degree {degree} is not a valid {parity} degree")
    return np.arange(start, degree + 1, 2)


def _grid(a: float, b: float) -> np.ndarray:
    # Chebyshev-spaced points resolve the ends, geometric ones a tiny left end.
    cheb = a + (b - a) * (1 - np.cos(np.linspace(0.0, np.pi, _GRID_POINTS))) / 2
    geo = np.geomspace(max(a, 1e-300), b, _GRID_POINTS) if a > 0 else cheb[:0]
    return np.unique(np.concatenate([cheb, geo, [a, b]]))


def _refine_extrema(err: Callable[[np.ndarray], np.ndarray], lo: np.ndarray,
                    hi: np.ndarray, sign: np.ndarray, rounds: int = 5, points: int = 33) -> np.ndarray:
    """Maximum of ``sign * err`` in each bracket ``[lo, hi]``, by repeated local grids.

    Each round shrinks a bracket to two steps of its grid (a factor 16), so five rounds
    place every extremum to 1e-6 of its bracket, vectorised over all brackets.
    """
    rows = np.arange(lo.size)
    for _ in range(rounds):
        x = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, points)
        best = x[rows, np.argmax(sign[:, None] * err(x), axis=1)]
        step = (hi - lo) / (points - 1)
        lo, hi = np.maximum(best - step, lo), np.minimum(best + step, hi)
    return best


def _alternating_extrema(err: Callable[[np.ndarray], np.ndarray], a: float, b: float,
                         grid: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local extrema of ``err`` on ``[a, b]`` merged with the old reference, one per sign run.

    The old reference alternates in sign by construction, so the merged sequence keeps at
    least as many alternations even where the grid misses an extremum.
    """
    values = err(grid)
    inner = np.flatnonzero((np.abs(values[1:-1]) >= np.abs(values[:-2]))
                           & (np.abs(values[1:-1]) >= np.abs(values[2:]))
                           & (np.sign(values[1:-1]) != 0)) + 1
    points = grid[inner]
    if points.size:
        refined = _refine_extrema(err, grid[inner - 1], grid[inner + 1], np.sign(values[inner]))
        points = refined
    points = np.unique(np.concatenate([[a], points, reference, [b]]))
    values = err(points)
    # Keep the largest |error| of every run of equal sign.
    keep_x, keep_v = [points[0]], [values[0]]
    for x, v in zip(points[1:], values[1:]):
        if np.sign(v) == np.sign(keep_v[-1]):
            if abs(v) > abs(keep_v[-1]):
                keep_x[-1], keep_v[-1] = x, v
        else:
            keep_x.append(x)
            keep_v.append(v)
    return np.array(keep_x), np.array(keep_v)


def minimax(f: Callable[[np.ndarray], np.ndarray], interval: tuple[float, float], degree: int,
            parity: Parity, width: float | None = None, *, tol: float = 1e-10,
            max_iter: int = 60) -> Minimax:
    """Best uniform approximation of ``f`` on ``interval`` by a polynomial of ``parity``.

    Solves ``min_p max_{x in [a, b]} |p(x) - f(x)|`` over polynomials of degree
    ``<= degree`` in the odd or even Chebyshev basis of ``[-width, width]``
    (``width`` defaults to ``b``). Requires ``0 <= a < b <= width``.

    Returns once the error at the reference points is levelled to a relative ``tol``;
    then ``error`` is within a factor ``1 / levelled`` of the true minimax error (de la
    Vallee Poussin's bound). Raises :class:`RemezError` if that does not happen.
    """
    a, b = float(interval[0]), float(interval[1])
    width = b if width is None else float(width)
    if not 0 <= a < b <= width:
        raise ValueError(f"need 0 <= a < b <= width, got interval {interval}, width {width}")
    idx = basis_indices(degree, parity)
    n = idx.size
    grid = _grid(a, b)
    # Start from the Chebyshev alternation points of [a, b].
    ref = a + (b - a) * (1 - np.cos(np.pi * np.arange(n + 1) / n)) / 2
    signs = (-1.0) ** np.arange(n + 1)
    scale = float(np.abs(f(grid)).max()) or 1.0
    coef = np.zeros(degree + 1)
    for iteration in range(1, max_iter + 1):
        system = np.column_stack([C.chebvander(ref / width, degree)[:, idx], signs])
        try:
            solution = np.linalg.solve(system, f(ref))
        except np.linalg.LinAlgError as exc:
            raise RemezError(f"singular Remez system at iteration {iteration}") from exc
        coef = np.zeros(degree + 1)
        coef[idx] = solution[:-1]
        err = lambda x, c=coef: C.chebval(x / width, c) - f(x)  # noqa: E731
        xs, vs = _alternating_extrema(err, a, b, grid, ref)
        if np.abs(vs).max() < _ROUNDING * scale:
            # The error is rounding noise: no better polynomial is representable.
            return Minimax(coef, width, (a, b), float(np.abs(err(grid)).max()), xs, 1.0, iteration)
        if xs.size < n + 1:
            raise RemezError(f"only {xs.size} alternations found, need {n + 1}")
        # Of more than n + 1 alternations keep the window with the largest error.
        if xs.size > n + 1:
            start = max(range(xs.size - n), key=lambda s: np.abs(vs[s:s + n + 1]).min())
            peak = int(np.argmax(np.abs(vs)))
            if not start <= peak < start + n + 1:
                start = min(max(peak - n // 2, 0), xs.size - n - 1)
            xs, vs = xs[start:start + n + 1], vs[start:start + n + 1]
        max_err = float(np.abs(err(grid)).max())
        max_err = max(max_err, float(np.abs(vs).max()))
        levelled = float(np.abs(vs).min() / max_err) if max_err > 0 else 1.0
        ref = xs
        signs = np.sign(vs)
        # Differences at rounding level cannot be levelled further.
        if max_err * (1 - levelled) <= tol * max_err + _ROUNDING * scale:
            return Minimax(coef, width, (a, b), max_err, ref, levelled, iteration)
    raise RemezError(f"no equioscillation after {max_iter} iterations (levelled {levelled:.3g})")
