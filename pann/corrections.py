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

from pann.modules import PolyReLU


@torch.no_grad()
def reestimate_batchnorm(pann: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every BatchNorm's running mean and variance to those of its inputs over ``batches``
    run through ``pann`` in eval mode, one norm after the other in execution order (each
    measured with the norms before it already re-estimated; one pass over ``batches`` per norm).

    Eval mode matters: normalising with batch statistics (``torch.optim.swa_utils.update_bn``)
    moves activations past ``B``, where the polynomials explode.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batch-norm re-estimation saw no data")
    pann.eval()
    order: list[nn.Module] = []
    norms = [m for m in pann.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_pre_hook(lambda module, inputs: order.append(module)) for m in norms]
    try:
        pann(batches[0])
    finally:
        for h in handles:
            h.remove()
    for norm in dict.fromkeys(order):  # execution order, each norm once
        total = squares = count = 0

        def measure(module, inputs):
            nonlocal total, squares, count
            x = inputs[0].double()
            finite = torch.isfinite(x)  # activations a polynomial blew up carry no statistics
            x = torch.where(finite, x, 0.0)
            dims = [d for d in range(x.ndim) if d != 1]
            total = total + x.sum(dim=dims)
            squares = squares + (x * x).sum(dim=dims)
            count = count + finite.sum(dim=dims)

        handle = norm.register_forward_pre_hook(measure)
        try:
            for inputs in batches:
                pann(inputs)
        finally:
            handle.remove()
        mean = total / count.clamp(min=1)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(squares / count.clamp(min=1) - mean * mean)


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
            # Only inputs inside [-B, B]: outside, the error is divergence, not leakage.
            inside = inputs[0].abs() <= module.bound
            error = torch.where(inside, output - F.relu(inputs[0]), 0.0).double()
            dims = [d for d in range(error.ndim) if d != 1]
            sums[name] = sums.get(name, 0) + error.sum(dim=dims)
            counts[name] = counts.get(name, 0) + inside.sum(dim=dims)
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
            m.offset = (sums[name] / counts[name].clamp(min=1)).float()
            offsets[name] = m.offset
    return offsets
