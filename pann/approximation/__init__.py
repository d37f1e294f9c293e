"""Polynomial approximations of ReLU: minimax polynomials (Remez), their composites, the catalog of the cheapest
degree set for each precision, and what evaluating them costs under CKKS (depth, multiplications).

The bottom layer of ``pann``: it imports no other subpackage.
"""

from pann.approximation.catalog import MAX_ALPHA, MIN_ALPHA, check_alpha, get_approximation, relu_for_precision
from pann.approximation.composite import FAMILIES, ReluApproximation, composite_relu, direct_relu
from pann.approximation.remez import minimax

__all__ = ["FAMILIES", "MAX_ALPHA", "MIN_ALPHA", "ReluApproximation", "check_alpha", "composite_relu",
           "direct_relu", "get_approximation", "minimax", "relu_for_precision"]
