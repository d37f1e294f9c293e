"""CKKS cost of evaluating polynomials: multiplicative depth and non-scalar multiplications.

Counts are for baby-step giant-step evaluation in the Chebyshev basis (Lee et al.):
a polynomial of degree ``d`` needs depth ``m = ceil(log2(d + 1))`` and
``min_l (2^l + m - l - 3 + ceil((d + 1) / 2^l))`` non-scalar multiplications.
Composites add their stages; ReLU ``x (1 + sgn x) / 2`` adds one level and one
multiplication to the sign; a ``k x k`` max-pool runs ``ceil(log2 k^2)`` rounds of
pairwise max, each a ReLU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def polynomial_depth(degree: int) -> int:
    """Multiplicative depth of one polynomial of ``degree``."""
    return math.ceil(math.log2(degree + 1))


def polynomial_multiplications(degree: int) -> int:
    """Non-scalar multiplications of one polynomial of ``degree`` (baby-step giant-step)."""
    m = polynomial_depth(degree)
    if m <= 1:
        return 0
    return min(2**l + m - l - 3 + math.ceil((degree + 1) / 2**l) for l in range(1, m + 1))


def sign_depth(degrees: Sequence[int]) -> int:
    """Depth of the composite sign ``p_k o ... o p_1``."""
    return sum(polynomial_depth(d) for d in degrees)


def sign_multiplications(degrees: Sequence[int]) -> int:
    """Non-scalar multiplications of the composite sign."""
    return sum(polynomial_multiplications(d) for d in degrees)


def maxpool_rounds(kernel_size: int) -> int:
    """Tournament rounds of pairwise max for a ``k x k`` window."""
    return math.ceil(math.log2(kernel_size * kernel_size))
