"""Post-training corrections of a PANN that need no retraining.

* :func:`reestimate_batchnorm`: BatchNorm running statistics re-estimated on (augmented) data
  flowing through the polynomial activations, so that normalisation matches what the PANN sees,
  optionally on the :func:`in_range_images` only;
  :func:`batchnorm_statistics` / :func:`set_batchnorm_statistics` read and write them by norm name
  (what a PANN spec carries).
* :func:`recalibrate_bounds`: every polynomial layer's interval ``B`` measured on its own inputs under
  the PANN, for backbones trained with polynomials in the loop, whose exact-ReLU version (what
  :func:`pann.conversion.flow.calibrate` observes) can be a different network.
* :func:`compensate_leakage`: the per-channel mean of the polynomial's error
  ``B r(x / B) - ReLU(x)`` (mostly leakage on negative inputs), measured on data and
  subtracted from each polynomial ReLU's output, i.e. folded into the next layer's bias.

The search applies them by name: :data:`CORRECTIONS` holds one :class:`Correction` per name, with the data it
needs, and :func:`apply_correction` applies one. Adding a correction is one entry there (and its test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pann.conversion.modules import PolyMaxPool2d, PolyReLU

_POLYNOMIAL_LAYERS = (PolyReLU, PolyMaxPool2d)


def _bound_per_input(module: nn.Module) -> float:
    """``B`` over the largest ``|x|`` a polynomial layer admits: 1 for a ReLU, 2 for a max-pool (``B`` bounds
    ``a - b``)."""
    return 2.0 if isinstance(module, PolyMaxPool2d) else 1.0


@torch.no_grad()
def in_range_images(pann: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mask of the ``images`` none of whose polynomial inputs leaves its interval under ``pann`` as it is
    (one forward pass, eval mode): ``[-B, B]`` for a polynomial ReLU, ``[-B/2, B/2]`` for a polynomial
    max-pool (whose ``B`` bounds the differences ``a - b`` of its inputs). Outside its interval a polynomial
    diverges: one such image can put an activation of 1e10 B into a norm's variance and flatten that
    channel for every image."""
    outside = torch.zeros(len(images), dtype=torch.bool)

    def hook(module, inputs, output):
        limit = module.bound / _bound_per_input(module)
        outside.logical_or_((inputs[0].abs() > limit).flatten(1).any(1).cpu())

    handles = [m.register_forward_hook(hook) for m in pann.modules() if isinstance(m, _POLYNOMIAL_LAYERS)]
    try:
        pann.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return ~outside


@torch.no_grad()
def reestimate_batchnorm(pann: nn.Module, batches: Iterable[torch.Tensor], in_range: bool = False) -> int:
    r"""Set every BatchNorm's running mean and variance to those of its inputs under ``pann``; returns
    the number of images they were estimated on.

    All ``batches`` are run as one batch, in eval mode, and each norm takes its statistics from
    its own input just before it normalises it:

    .. math:: \mu_c = \operatorname{mean}_{n,h,w}\, x_{nch\ldots}, \qquad
              \sigma^2_c = \operatorname{mean}_{n,h,w}\,(x_{nch\ldots} - \mu_c)^2

    over the finite entries (activations a polynomial blew up carry no statistics). So the norms
    are re-estimated in execution order, each on inputs produced by the norms before it with their
    new statistics, in one forward pass (memory grows with the number of images: a few thousand
    CIFAR images is the intended size). A norm applied twice keeps the statistics of its last call.

    The batches must look like the training batches (the same augmentation): the stored statistics
    were accumulated on augmented images, and re-estimating them on clean ones moves them by more
    than the polynomials do (``experiments/corrections_check.py``, docs/results.md).

    With ``in_range`` the images that :func:`in_range_images` rejects under ``pann`` as given (its
    statistics before the re-estimation) are left out first: on deep networks (ResNet-56) the few
    augmented images that leave an interval decide the statistics otherwise (docs/results.md, "What do the
    corrections buy?").
    """
    inputs = list(batches)
    if not inputs:
        raise ValueError("batch-norm re-estimation saw no data")
    images = torch.cat(inputs)
    if in_range:
        images = images[in_range_images(pann, images)]
        if not len(images):
            raise ValueError("batch-norm re-estimation: no image stays inside every layer's [-B, B]")

    def reestimate(norm: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        dims = [d for d in range(args[0].ndim) if d != 1]
        if torch.isfinite(args[0]).all():  # the usual case, in one pass (the masked one below is ~10x slower)
            var, mean = torch.var_mean(args[0], dim=dims, correction=0)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            return
        x = args[0].double()
        finite = torch.isfinite(x)
        x = torch.where(finite, x, 0.0)
        shape = [-1 if d == 1 else 1 for d in range(x.ndim)]
        count = finite.sum(dim=dims).clamp(min=1)
        mean = x.sum(dim=dims) / count
        centred = torch.where(finite, x - mean.view(shape), 0.0)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_((centred * centred).sum(dim=dims) / count)

    handles = [m.register_forward_pre_hook(reestimate) for m in _norms(pann).values()]
    try:
        pann.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return len(images)


@torch.no_grad()
def recalibrate_bounds(pann: nn.Module, batches: Iterable[torch.Tensor], margin: float = 1.0) -> dict[str, float]:
    r"""Set every polynomial layer's ``B`` from its own inputs under ``pann``; returns them by layer name.

    .. math:: B = m \max |x| \ \text{(ReLU)}, \qquad B = 2 m \max |x| \ \text{(max-pool, whose } B
              \text{ bounds the differences } a - b)

    over the finite inputs, ``m`` the ``margin``. All ``batches`` run as one batch in eval mode and each
    layer sets its ``B`` just before it evaluates, so the layers are recalibrated in execution order, each
    on the inputs that the recalibrated layers before it produce. This is what a backbone trained with
    polynomials in the loop (approximation-aware training) needs: with exact ReLUs, where
    :func:`pann.conversion.flow.calibrate` observes the ranges, it can be a different network (a ResNet-20 trained
    with alpha-5 polynomials in 12 of its 19 ReLUs scores 10% with exact ReLUs; docs/results.md, "What does training
    buy?").
    Raises ``ValueError`` without data or polynomial layers.
    """
    images = list(batches)
    if not images:
        raise ValueError("bound recalibration saw no data")
    layers = {name: m for name, m in pann.named_modules() if isinstance(m, _POLYNOMIAL_LAYERS)}
    if not layers:
        raise ValueError(f"{type(pann).__name__} has no polynomial layers to recalibrate (convert it first)")

    def rebound(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].abs()
        largest = float(x[torch.isfinite(x)].max()) if torch.isfinite(x).any() else 0.0
        module.bound.fill_(max(_bound_per_input(module) * margin * largest, 1e-6))

    handles = [m.register_forward_pre_hook(rebound) for m in layers.values()]
    try:
        pann.eval()(torch.cat(images))
    finally:
        for h in handles:
            h.remove()
    return {name: float(m.bound) for name, m in layers.items()}


def _norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def batchnorm_statistics(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """Every norm's ``running_mean`` and ``running_var``, by qualified name (those of the backbone's weights)."""
    return {name: {"running_mean": m.running_mean.tolist(), "running_var": m.running_var.tolist()}
            for name, m in _norms(model).items()}


@torch.no_grad()
def set_batchnorm_statistics(model: nn.Module, statistics: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Overwrite the norms' running statistics with ``statistics`` (as :func:`batchnorm_statistics` gives them).

    Raises ``ValueError`` naming every norm the model lacks or has without statistics, and every
    statistic whose length is not the norm's channel count; nothing is written then.
    """
    norms = _norms(model)
    problems = [f"{name}: the model has no such batch norm" for name in statistics if name not in norms]
    problems += [f"{name}: no statistics given" for name in norms if name not in statistics]
    for name, norm in norms.items():
        for key in ("running_mean", "running_var"):
            values = statistics.get(name, {}).get(key) if name in statistics else None
            if name in statistics and (values is None or len(values) != norm.num_features):
                problems.append(f"{name}.{key}: expected {norm.num_features} values")
    if problems:
        raise ValueError("batch-norm statistics do not fit the model: " + "; ".join(problems))
    for name, norm in norms.items():
        for key in ("running_mean", "running_var"):
            getattr(norm, key).copy_(torch.tensor(statistics[name][key], dtype=getattr(norm, key).dtype))


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


@dataclass(frozen=True)
class CorrectionData:
    """What a correction may measure on, each given lazily (a callable), so that only what it needs is made:
    ``calibration()`` the calibration images as batches, ``batchnorm()`` the augmented batch-norm images."""

    calibration: Callable[[], Iterable[torch.Tensor]]
    batchnorm: Callable[[], Sequence[torch.Tensor]]
    margin: float = 1.0


@dataclass(frozen=True)
class Correction:
    """A post-training correction by name: ``apply(pann, data)`` corrects a converted PANN in place. ``needs``
    names the :class:`CorrectionData` it reads (a search sizes and checks those images only); with
    ``carries_batchnorm`` the corrected norms' statistics are part of the answer (its PANN spec carries them)."""

    name: str
    apply: Callable[[nn.Module, CorrectionData], object]
    needs: tuple[str, ...] = ()
    carries_batchnorm: bool = False


CORRECTIONS: dict[str, Correction] = {c.name: c for c in (
    Correction("none", lambda pann, data: None),
    Correction("compensate", lambda pann, data: compensate_leakage(pann, data.calibration()), ("calibration",)),
    Correction("batchnorm", lambda pann, data: reestimate_batchnorm(pann, data.batchnorm()), ("batchnorm",),
               carries_batchnorm=True),
    Correction("batchnorm-in-range", lambda pann, data: reestimate_batchnorm(pann, data.batchnorm(), in_range=True),
               ("batchnorm",), carries_batchnorm=True),
    Correction("bounds", lambda pann, data: recalibrate_bounds(pann, data.calibration(), data.margin),
               ("calibration",)),
)}


def apply_correction(pann: nn.Module, name: str, data: CorrectionData) -> None:
    """Apply the correction ``name`` of :data:`CORRECTIONS` to ``pann`` in place (``KeyError`` naming the known
    ones for another name)."""
    if name not in CORRECTIONS:
        raise KeyError(f"unknown correction {name!r}; expected one of {', '.join(CORRECTIONS)}")
    CORRECTIONS[name].apply(pann, data)
