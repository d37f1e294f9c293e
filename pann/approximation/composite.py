"""Polynomial approximations of ReLU on [-1, 1] and their precision.

Two families:

* ``composite`` (Lee et al.): ``ReLU(t) ~ t (1 + p(t)) / 2`` with ``p = p_k o ... o p_1`` a
  composite of odd polynomials approximating sgn. Stage 1 is the minimax
  approximation of sgn on ``[-1, -e] U [e, 1]``; stage ``i`` is minimax on the image
  ``[1 - d_{i-1}, 1 + d_{i-1}]`` of stage ``i - 1`` (``d`` being that stage's minimax
  error). The dead zone ``e`` is chosen to minimise the ReLU error.
* ``minimax`` and ``least-squares``: one polynomial of the given degree approximating
  ReLU directly on ``[-1, 1]``. The minimax one is ``t / 2 + q(t) / 2`` with ``q`` the
  even minimax approximation of ``|t|`` (the odd part of the error can only add to
  the even part at ``+-t``, so this split is optimal).

The **precision** of an approximation ``r`` is ``alpha = -log2 max_{t in [-1, 1]} |r(t) - ReLU(t)|``,
measured on a fixed dense grid (:data:`PRECISION_GRID`). Scaled to an interval
``[-B, B]`` as ``B r(x / B)`` the absolute error is ``B 2^-alpha``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.polynomial import chebyshev as C
from scipy.optimize import minimize_scalar

from pann.approximation import polynomial_cost
from pann.approximation.remez import minimax

Family = Literal["composite", "minimax", "least-squares"]
FAMILIES: tuple[str, ...] = ("composite", "minimax", "least-squares")

MAX_DEGREE = 31

# Uniform points resolve the whole interval, geometric ones the error peak of
# high-precision composites, which sits near |t| ~ 2^(2 - alpha).
PRECISION_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 2**16 + 1),
                                           np.geomspace(2.0**-30, 1.0, 2**13)]))
_SEARCH_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 2**12 + 1),
                                         np.geomspace(2.0**-30, 1.0, 2**11)]))
_LOG2_DEAD_ZONE_RANGE = (-26.0, -0.25)
# Below this sign error a stage is linear: higher degrees would only fit rounding noise.
_NEGLIGIBLE_SIGN_ERROR = 2.0**-24


@dataclass(frozen=True)
class Stage:
    """One polynomial ``p(x) = sum_k c_k T_k(x / width)`` in the Chebyshev basis."""

    degree: int
    width: float
    coefficients: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.chebval(np.asarray(x, dtype=np.float64) / self.width, self.coefficients)


@dataclass(frozen=True)
class ReluApproximation:
    """A polynomial approximation of ReLU on ``[-1, 1]``, with its precision and FHE cost.

    ``depth`` and ``multiplications`` are the CKKS cost of one ReLU (see
    :mod:`pann.approximation.polynomial_cost`); ``dead_zone`` is ``e`` of the composite family.
    """

    family: Family
    degrees: tuple[int, ...]
    stages: tuple[Stage, ...]
    precision: float
    depth: int
    multiplications: int
    dead_zone: float | None = None

    def sign(self, t: np.ndarray) -> np.ndarray:
        """The composite sign approximation ``p(t)`` (composite family only)."""
        if self.family != "composite":
            raise ValueError(f"a {self.family} approximation has no sign polynomial")
        return _compose(self.stages, t)

    def relu(self, t: np.ndarray) -> np.ndarray:
        """The ReLU approximation at ``t`` (meant for ``t`` in ``[-1, 1]``), in float64."""
        t = np.asarray(t, dtype=np.float64)
        if self.family == "composite":
            return t * (1.0 + _compose(self.stages, t)) / 2.0
        return self.stages[0](t)

    @property
    def name(self) -> str:
        return f"{self.family}:{','.join(map(str, self.degrees))}"

    def to_dict(self) -> dict:
        """Plain-data form for JSON export: Chebyshev coefficients of every stage."""
        data = asdict(self)
        data["degrees"] = list(self.degrees)
        data["basis"] = "chebyshev"
        data["interval"] = [-1.0, 1.0]
        data["stages"] = [{"degree": s.degree, "width": s.width, "coefficients": list(s.coefficients)}
                          for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ReluApproximation:
        stages = tuple(Stage(int(s["degree"]), float(s["width"]), tuple(map(float, s["coefficients"])))
                       for s in data["stages"])
        return cls(family=data["family"], degrees=tuple(int(d) for d in data["degrees"]), stages=stages,
                   precision=float(data["precision"]), depth=int(data["depth"]),
                   multiplications=int(data["multiplications"]), dead_zone=data.get("dead_zone"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _compose(stages: Sequence[Stage], t: np.ndarray) -> np.ndarray:
    y = np.asarray(t, dtype=np.float64)
    for stage in stages:
        y = stage(y)
    return y


def relu_error(relu_values: np.ndarray, t: np.ndarray) -> float:
    """``max |r(t) - ReLU(t)|`` over the points ``t``."""
    return float(np.max(np.abs(relu_values - np.maximum(t, 0.0))))


def measure_precision(approx_relu, grid: np.ndarray = PRECISION_GRID) -> float:
    """Precision in bits, ``-log2 max |r(t) - ReLU(t)|``, over ``+-grid``."""
    t = np.concatenate([-grid[::-1], grid])
    error = relu_error(approx_relu(t), t)
    return math.inf if error == 0 else -math.log2(error)


def validate_degrees(degrees: Sequence[int], odd: bool = True) -> tuple[int, ...]:
    """Check a degree set; raise ``ValueError`` naming the problem."""
    degrees = tuple(int(d) for d in degrees)
    if not degrees:
        raise ValueError("the degree set is empty")
    for d in degrees:
        if d < 1 or d > MAX_DEGREE:
            raise ValueError(f"degree {d} outside 1..{MAX_DEGREE}")
        if odd and d % 2 == 0:
            raise ValueError(f"degree {d} is even; sign stages must have odd degree")
    return degrees


def composite_sign(degrees: Sequence[int], dead_zone: float) -> tuple[Stage, ...]:
    """Stages of Lee et al.'s composite minimax sign approximation for dead zone ``e``.

    Stage 1 is minimax for sgn on ``[-1, -e] U [e, 1]``, stage ``i`` minimax on the
    image of stage ``i - 1``. A stage whose interval is narrower than float64 resolves
    already approximates sgn to 2^-24 by a linear polynomial keeps that linear minimax
    polynomial: higher degrees would only fit float64 rounding noise.
    """
    degrees = validate_degrees(degrees)
    if not 0 < dead_zone < 1:
        raise ValueError(f"dead zone must lie in (0, 1), got {dead_zone}")
    lo, hi = dead_zone, 1.0
    stages = []
    for degree in degrees:
        coef = np.zeros(degree + 1)
        error = (hi - lo) / (hi + lo)
        if error < _NEGLIGIBLE_SIGN_ERROR:
            coef[1] = 2 * hi / (lo + hi)
        else:
            fit = minimax(np.ones_like, (lo, hi), degree, "odd")
            coef, error = fit.coef, fit.error
        stages.append(Stage(degree, hi, tuple(coef.tolist())))
        lo, hi = 1.0 - error, 1.0 + error
    return tuple(stages)


def _composite_error(degrees: tuple[int, ...], log2_dead_zone: float, grid: np.ndarray) -> float:
    stages = composite_sign(degrees, 2.0**log2_dead_zone)
    return relu_error(grid * (1.0 + _compose(stages, grid)) / 2.0, grid)


def composite_relu(degrees: Sequence[int]) -> ReluApproximation:
    """Composite ReLU approximation with the dead zone that minimises the ReLU error.

    The ReLU error is even in ``t``, so it is minimised over ``t >= 0``: a coarse scan of
    ``log2 e`` followed by a bounded Brent search around the best point.
    """
    degrees = validate_degrees(degrees)
    scan = np.arange(_LOG2_DEAD_ZONE_RANGE[0], _LOG2_DEAD_ZONE_RANGE[1], 2.0)
    errors = [_composite_error(degrees, x, _SEARCH_GRID) for x in scan]
    best = scan[int(np.argmin(errors))]
    result = minimize_scalar(lambda x: _composite_error(degrees, x, _SEARCH_GRID),
                             bounds=(best - 2.0, min(best + 2.0, _LOG2_DEAD_ZONE_RANGE[1])),
                             method="bounded", options={"xatol": 1e-3})
    dead_zone = 2.0 ** float(result.x if result.fun <= min(errors) else best)
    stages = composite_sign(degrees, dead_zone)
    precision = measure_precision(lambda t: t * (1.0 + _compose(stages, t)) / 2.0)
    return ReluApproximation("composite", degrees, stages, precision,
                             depth=polynomial_cost.sign_depth(degrees) + 1,
                             multiplications=polynomial_cost.sign_multiplications(degrees) + 1,
                             dead_zone=dead_zone)


def direct_relu(degree: int, family: Family = "minimax") -> ReluApproximation:
    """One polynomial of ``degree`` approximating ReLU on ``[-1, 1]``.

    ``minimax`` minimises the maximum error (Remez on ``|t|``); ``least-squares``
    minimises the mean squared error on a uniform grid of ``[-1, 1]``.
    """
    (degree,) = validate_degrees([degree], odd=False)
    if degree < 2:
        raise ValueError(f"a direct ReLU approximation needs degree >= 2, got {degree}")
    if family == "minimax":
        even = minimax(np.abs, (0.0, 1.0), degree - degree % 2, "even", 1.0)
        coef = np.zeros(degree + 1)
        coef[: even.coef.size] = even.coef / 2
        coef[1] += 0.5
    elif family == "least-squares":
        t = np.linspace(-1.0, 1.0, 2**14 + 1)
        coef = C.chebfit(t, np.maximum(t, 0.0), degree)
    else:
        raise ValueError(f"unknown direct family {family!r}; expected 'minimax' or 'least-squares'")
    stage = Stage(degree, 1.0, tuple(coef.tolist()))
    return ReluApproximation(family, (degree,), (stage,), measure_precision(stage),
                             depth=polynomial_cost.polynomial_depth(degree),
                             multiplications=polynomial_cost.polynomial_multiplications(degree))
