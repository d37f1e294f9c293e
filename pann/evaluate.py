"""Accuracy of a backbone and of its PANNs over a range of precisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pann.approximation import ReluApproximation
from pann.catalog import relu_for_precision
from pann.convert import Scope, calibrate, convert, interval_bounds, out_of_range_rate, prepare
from pann.data import ImageSet


@dataclass(frozen=True)
class CurvePoint:
    """Accuracy of the PANN built from one approximation."""

    alpha: float
    family: str
    degrees: tuple[int, ...]
    precision: float
    depth: int
    multiplications: int
    accuracy: float
    out_of_range: float

    def to_dict(self) -> dict:
        return {**asdict(self), "degrees": list(self.degrees)}


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500, device: str | torch.device = "cpu",
             desc: str | None = None) -> float:
    """Top-1 accuracy; a prediction whose logits are not all finite counts as wrong."""
    model.eval().to(device)
    correct = 0
    batches = data.batches(batch_size)
    for x, y in tqdm(batches, total=-(-len(data) // batch_size), desc=desc, leave=False, disable=desc is None):
        logits = model(x.to(device)).float()
        ok = (logits.argmax(1).cpu() == y) & torch.isfinite(logits).all(1).cpu()
        correct += int(ok.sum())
    return correct / len(data)


def calibrated(backbone: nn.Module, calibration: ImageSet, batch_size: int = 500,
               device: str | torch.device = "cpu") -> nn.Module:
    """The backbone prepared for conversion, with activation ranges observed on ``calibration``."""
    observed = prepare(backbone).to(device)
    calibrate(observed, (x.to(device) for x, _ in calibration.batches(batch_size)))
    return observed


def pann_accuracy(observed: nn.Module, approximation: ReluApproximation, data: ImageSet, scope: Scope,
                  margin: float, alpha: float | None = None, batch_size: int = 500,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  desc: str | None = None) -> CurvePoint:
    """Convert a calibrated model with ``approximation`` and measure it on ``data``."""
    pann = convert(observed, approximation, scope, margin, dtype=dtype).to(device)
    acc = accuracy(pann, data, batch_size, device, desc)
    return CurvePoint(alpha if alpha is not None else approximation.precision, approximation.family,
                      approximation.degrees, approximation.precision, approximation.depth,
                      approximation.multiplications, acc, out_of_range_rate(pann))


def accuracy_curve(observed: nn.Module, data: ImageSet, alphas: Sequence[float], scope: Scope = "layer",
                   margin: float = 1.0, batch_size: int = 500, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, progress: bool = True) -> list[CurvePoint]:
    """PANN accuracy at each ``alpha``, with the cheapest composite reaching it."""
    interval_bounds(observed, scope, margin)  # validate before the long loop
    return [pann_accuracy(observed, relu_for_precision(alpha), data, scope, margin, alpha, batch_size,
                          device, dtype, desc=f"alpha {alpha:g}" if progress else None)
            for alpha in alphas]
