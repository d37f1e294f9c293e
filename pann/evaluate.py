"""Accuracy of a backbone and of its PANNs over a range of precisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import Scope, calibrate, convert, out_of_range_rate, prepare, reset_out_of_range
from pann.conversion.corrections import compensate_leakage, reestimate_batchnorm
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


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose arg-max is the label; a row of logits that are not all finite counts as wrong.

    ``logits`` ``(N, C)`` on any device, ``labels`` ``(N,)`` on the CPU. The one accuracy counter of
    the project: a PANN whose polynomial overflowed must not score by the accident of ``argmax(nan)``.
    """
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
    return accuracies([model], data, batch_size, device, desc)[0]


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
                   batchnorm_batches: Sequence[torch.Tensor] | None = None,
                   batchnorm_in_range: bool = False) -> list[CurvePoint]:
    """PANN accuracy at each ``alpha``, with the cheapest composite reaching it.

    With ``batchnorm_batches`` each PANN first gets :func:`~pann.conversion.corrections.reestimate_batchnorm` on them
    (augmented training images; with ``batchnorm_in_range`` on those whose inputs stay inside every layer's
    [-B, B] only); with ``leakage_batches`` it then gets
    :func:`~pann.conversion.corrections.compensate_leakage` measured on them.
    Every batch of ``data`` is loaded once and run through the PANNs of all alphas.
    """
    approximations = [relu_for_precision(alpha) for alpha in alphas]
    panns = [convert(observed, a, scope, margin, dtype=dtype, compiled=compiled).to(device).eval()
             for a in approximations]
    for pann in panns:
        if batchnorm_batches is not None:
            reestimate_batchnorm(pann, [x.to(device) for x in batchnorm_batches], in_range=batchnorm_in_range)
        if leakage_batches is not None:
            compensate_leakage(pann, (x.to(device) for x in leakage_batches))
        reset_out_of_range(pann)  # count only the evaluation's inputs
    scores = accuracies(panns, data, batch_size, device, f"{len(panns)} PANNs" if progress else None)
    return [CurvePoint(alpha, a.family, a.degrees, a.precision, a.depth, a.multiplications, score,
                       out_of_range_rate(pann))
            for alpha, a, pann, score in zip(alphas, approximations, panns, scores)]


@torch.no_grad()
def accuracies(models: Sequence[nn.Module], data: ImageSet, batch_size: int = 500,
               device: str | torch.device = "cpu", desc: str | None = None) -> list[float]:
    """Top-1 accuracy of each model on ``data``, loading every batch once for all of them."""
    return [score for score, _ in accuracies_and_losses(models, data, batch_size, device, desc)]


# The cross-entropy an image counts for at most: a row of logits that is not all finite counts this much.
MAX_LOSS = 100.0


@torch.no_grad()
def accuracies_and_losses(models: Sequence[nn.Module], data: ImageSet, batch_size: int = 500,
                          device: str | torch.device = "cpu", desc: str | None = None) -> list[tuple[float, float]]:
    """Top-1 accuracy and mean cross-entropy of each model on ``data``, every batch loaded once for all.

    The loss of an image is ``min(-log softmax(logits)[label], MAX_LOSS)``, and ``MAX_LOSS`` where its logits are
    not all finite (an overflowed polynomial): a smooth score, less noisy than the accuracy, that stays finite.
    """
    correct, loss = [0] * len(models), [0.0] * len(models)
    for model in models:
        model.eval().to(device)
    for x, y in _progress(data, batch_size, desc):
        x = x.to(device)
        for i, model in enumerate(models):
            logits = model(x).float().cpu()
            correct[i] += count_correct(logits, y)
            finite = torch.isfinite(logits).all(1)
            per_image = torch.full((len(y),), MAX_LOSS)
            if finite.any():
                per_image[finite] = nn.functional.cross_entropy(logits[finite], y[finite], reduction="none")
            loss[i] += float(per_image.clamp(max=MAX_LOSS).sum())
    return [(c / len(data), total / len(data)) for c, total in zip(correct, loss)]
