"""pann: polynomial approximations of neural networks (PANNs) for inference under CKKS or MPC.

The subpackages, each importing only those listed before it:

* :mod:`pann.approximation`: minimax and composite polynomial approximations of ReLU, the degree-set catalog,
  their CKKS depth and multiplications;
* :mod:`pann.models`: the backbones' builders and named weights;
* :mod:`pann.conversion`: a backbone into a PANN (prepare, calibrate, convert), layer groups, post-training
  corrections, the portable PANN spec;
* :mod:`pann.cost`: what a PANN costs under CKKS (level graph, exact bootstrap placement, presets, objectives);
* :mod:`pann.training`: training with the polynomials and the mitigation techniques;
* :mod:`pann.fhe`: a PANN under real encryption (Orion).

Beside them: :mod:`pann.data` (datasets), :mod:`pann.evaluate` (accuracy), :mod:`pann.files` and
:mod:`pann.user_input` (shared by all), and the command line (:mod:`pann.cli`, :mod:`pann.console`). The names below
are the short imports a user types (``from pann import prepare, calibrate, convert``); they are loaded on first use.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "relu_for_precision": "pann.approximation", "ReluApproximation": "pann.approximation",
    "prepare": "pann.conversion", "calibrate": "pann.conversion", "convert": "pann.conversion",
    "out_of_range_rate": "pann.conversion", "layer_groups": "pann.conversion", "spec_of": "pann.conversion",
    "network_cost": "pann.cost", "load_preset": "pann.cost",
    "build_model": "pann.models", "resnet20": "pann.models", "resnet56": "pann.models",
    "load_dataset": "pann.data", "accuracy": "pann.evaluate",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'pann' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
