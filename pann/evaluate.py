"""Accuracy of a backbone and of its PANNs over a range of precisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pann.catalog import relu_for_precision
from pann.convert import Scope, calibrate, convert, out_of_range_rate, prepare, reset_out_of_range
from pann.corrections import compensate_leakage, reestimate_batchnorm
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


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Correct predictions; a prediction whose logits are not all finite counts as wrong."""
    logits = logits.float()
    ok = (logits.argmax(1).cpu() == labels) & torch.isfinite(logits).all(1).cpu()
    return int(ok.sum())


def _progress(data: ImageSet, batch_size: int, desc: str | None):
    return tqdm(data.batches(batch_size), total=-(-len(data) // batch_size), desc=desc, leave=False,
                disable=desc is None)


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500, device: str | torch.device = "cpu",
             desc: str | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    model.eval().to(device)
    return sum(_correct(model(x.to(device)), y) for x, y in _progress(data, batch_size, desc)) / len(data)


def calibrated(backbone: nn.Module, calibration: ImageSet, batch_size: int = 500,
               device: str | torch.device = "cpu") -> nn.Module:
    """The backbone prepared for conversion, with activation ranges observed on ``calibration``."""
    observed = prepare(backbone).to(device)
    calibrate(observed, (x.to(device) for x, _ in calibration.batches(batch_size)))
    return observed


@torch.no_grad()
def accuracy_curve(observed: nn.Module, data: ImageSet, alphas: Sequence[float], scope: Scope = "layer",
                   margin: float = 1.0, batch_size: int = 500, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, compiled: bool = True,
                   progress: bool = True, leakage_batches: Sequence[torch.Tensor] | None = None,
                   batchnorm_batches: Sequence[torch.Tensor] | None = None) -> list[CurvePoint]:
    """PANN accuracy at each ``alpha``, with the cheapest composite reaching it.

    With ``batchnorm_batches`` each PANN first gets :func:`~pann.corrections.reestimate_batchnorm` on them
    (augmented training images); with ``leakage_batches`` it then gets
    :func:`~pann.corrections.compensate_leakage` measured on them.
    Every batch of ``data`` is loaded once and run through the PANNs of all alphas.
    """
    approximations = [relu_for_precision(alpha) for alpha in alphas]
    panns = [convert(observed, a, scope, margin, dtype=dtype, compiled=compiled).to(device).eval()
             for a in approximations]
    for pann in panns:
        if batchnorm_batches is not None:
            reestimate_batchnorm(pann, [x.to(device) for x in batchnorm_batches])
        if leakage_batches is not None:
            compensate_leakage(pann, (x.to(device) for x in leakage_batches))
        reset_out_of_range(pann)  # count only the evaluation's inputs
    correct = [0] * len(panns)
    for x, y in _progress(data, batch_size, f"{len(panns)} PANNs" if progress else None):
        x = x.to(device)
        for i, pann in enumerate(panns):
            correct[i] += _correct(pann(x), y)
    return [CurvePoint(alpha, a.family, a.degrees, a.precision, a.depth, a.multiplications, c / len(data),
                       out_of_range_rate(pann))
            for alpha, a, pann, c in zip(alphas, approximations, panns, correct)]
