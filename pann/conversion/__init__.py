"""A backbone turned into a PANN, in the manner of PyTorch's post-training quantization: ``prepare`` puts range
observers where the ReLUs and max-pools are, ``calibrate`` runs images through them, ``convert`` replaces them
by polynomial layers. Also here: the layer groups a search assigns alphas to, the post-training corrections, and
the portable PANN spec.

Imports :mod:`pann.approximation` only.
"""

from pann.conversion.corrections import CORRECTIONS, Correction, CorrectionData, apply_correction
from pann.conversion.flow import (NonPolynomialError, calibrate, convert, observers, out_of_range_rate, poly_modules,
                                  prepare, reset_out_of_range)
from pann.conversion.groups import LayerGroups, layer_groups
from pann.conversion.modules import PolyMaxPool2d, PolyReLU
from pann.conversion.spec import PannSpec, SpecError, apply, load, spec_of

__all__ = ["CORRECTIONS", "Correction", "CorrectionData", "LayerGroups", "NonPolynomialError", "PannSpec",
           "PolyMaxPool2d", "PolyReLU",
           "SpecError", "apply", "apply_correction", "calibrate", "convert", "layer_groups", "load", "observers",
           "out_of_range_rate", "poly_modules", "prepare", "reset_out_of_range", "spec_of"]
