"""Post-training corrections of a PANN that need no retraining.

* :func:`reestimate_batchnorm`: BatchNorm running statistics re-estimated on data flowing
  through the polynomial activations, so that normalisation matches what the PANN sees.
* :func:`compensate_leakage`: the per-channel mean of the polynomial's error
  ``B r(x / B) - ReLU(x)`` (mostly leakage on negative inputs), measured on data and
  subtracted from each polynomial ReLU's output, i.e. folded into the next layer's bias.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from pann.modules import PolyReLU


def reestimate_batchnorm(pann: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace every BatchNorm's running mean and variance by their average over ``batches``
    of inputs run through ``pann`` (``torch.optim.swa_utils.update_bn``); leaves ``pann`` in eval mode."""
    batches = list(batches)
    if not batches:
        raise ValueError("batch-norm re-estimation saw no data")
    update_bn(batches, pann)
    pann.eval()


@torch.no_grad()
def compensate_leakage(pann: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Set each :class:`PolyReLU`'s ``offset`` to the per-channel mean of its error on ``batches``.

    All layers are measured in one pass with no compensation applied, so a layer's
    estimate ignores the compensation of the layers before it. Returns the offsets.
    """
    layers = {name: m for name, m in pann.named_modules() if isinstance(m, PolyReLU)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def measure(name):
        def hook(module, inputs, output):
            error = (output - F.relu(inputs[0])).double()
            dims = [d for d in range(error.ndim) if d != 1]
            sums[name] = sums.get(name, 0) + error.sum(dim=dims)
            counts[name] = counts.get(name, 0) + error.numel() // error.shape[1]
        return hook

    for m in layers.values():
        m.offset = None
    handles = [m.register_forward_hook(measure(name)) for name, m in layers.items()]
    try:
        pann.eval()
        for inputs in batches:
            pann(inputs)
    finally:
        for h in handles:
            h.remove()
    if not counts:
        raise ValueError("leakage compensation saw no data")
    offsets = {}
    for name, m in layers.items():
        if name in counts:
            m.offset = (sums[name] / counts[name]).float()
            offsets[name] = m.offset
    return offsets
