"""The PANN spec: a portable JSON description of a converted network's polynomial layers.

With the spec and the backbone's weights, anyone can rebuild the PANN in another library::

    {"format": "pann-spec", "version": 1,
     "model": "resnet20", "input_normalization": {"mean": [...], "std": [...]},
     "layers": [{"name": "net_relu", "kind": "relu", "B": 9.8,
                 "family": "composite", "degrees": [7, 15], "precision": 8.03, "depth": 8,
                 "multiplications": 12, "dead_zone": 0.0132,
                 "basis": "chebyshev", "interval": [-1, 1],
                 "stages": [{"degree": 7, "width": 1.0, "coefficients": [c_0, ..., c_7]}, ...]},
                {"name": "...", "kind": "maxpool", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                 ...}]}

A layer computes ``B r(x / B)`` with ``r(t) = t (1 + p(t)) / 2`` for the composite family, ``p`` being the
stages applied in turn, stage ``i`` being ``sum_k c_k T_k(u / width_i)`` (Chebyshev polynomials of the first
kind); for the direct families ``r`` is the single stage. A max-pool is a tournament of pairwise
``max(a, b) = b + B r((a - b) / B)``. Layers are listed in execution order, named as in
:func:`pann.conversion.flow.observers`.

Version 2 adds ``"batchnorm": {"layer1.0.bn1": {"running_mean": [...], "running_var": [...]}, ...}``: every
batch norm's running statistics, which replace those of the backbone's weights (a search's answer with the
correction ``batchnorm`` re-estimated them under the PANN; ``"correction"`` says which correction the answer
had). A spec without them is written as version 1, which version-1 readers still read; a version-1 reader
refuses version 2 rather than evaluate the network with the wrong statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pann.conversion import corrections
from pann.approximation.composite import FAMILIES, ReluApproximation, validate_degrees
from pann.conversion.flow import convert, observers, poly_modules
from pann.conversion.groups import check_names
from pann.files import write_bytes_atomic
from pann.conversion.modules import PolyMaxPool2d
from pann.user_input import ProblemsError

FORMAT = "pann-spec"
VERSION = 2  # the newest this pann reads and writes; it writes 1 when there are no batch-norm statistics
_STATISTICS = ("running_mean", "running_var")
_LAYER_FIELDS = ("name", "kind", "B", "family", "degrees", "precision", "depth", "multiplications", "stages")


class SpecError(ProblemsError):
    """A spec file that cannot be read; ``problems`` lists every problem."""

    def __init__(self, problems: list[str], source: str = "spec"):
        super().__init__(problems, f"invalid PANN spec {source}: ")


@dataclass(frozen=True)
class LayerSpec:
    """One polynomial layer: its name, kind (``relu`` or ``maxpool``), interval bound ``B`` and approximation."""

    name: str
    kind: str
    bound: float
    approximation: ReluApproximation
    pool: Mapping[str, list[int]] = field(default_factory=dict)  # kernel_size, stride, padding of a max-pool

    def to_dict(self) -> dict[str, Any]:
        approx = self.approximation.to_dict()
        return {"name": self.name, "kind": self.kind, "B": self.bound, **approx, **dict(self.pool)}


@dataclass(frozen=True)
class PannSpec:
    """Every polynomial layer of a PANN, plus what identifies its backbone (``model``, normalisation...)."""

    layers: tuple[LayerSpec, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    batchnorm: Mapping[str, Mapping[str, list[float]]] = field(default_factory=dict)  # by norm: running stats

    @property
    def approximations(self) -> dict[str, ReluApproximation]:
        return {layer.name: layer.approximation for layer in self.layers}

    @property
    def bounds(self) -> dict[str, float]:
        return {layer.name: layer.bound for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        statistics = {"batchnorm": {k: dict(v) for k, v in self.batchnorm.items()}} if self.batchnorm else {}
        return {"format": FORMAT, "version": 2 if self.batchnorm else 1, **dict(self.meta),
                "layers": [layer.to_dict() for layer in self.layers], **statistics}

    def save(self, path: str | Path) -> None:
        write_bytes_atomic(path, json.dumps(self.to_dict(), indent=1).encode())


def spec_of(pann: nn.Module, batchnorm_statistics: bool = False, **meta: Any) -> PannSpec:
    """The spec of a converted PANN (``meta``: e.g. ``model``, ``weights``, ``input_normalization``, ``correction``),
    with its norms' running statistics when ``batchnorm_statistics`` (they differ from the weights')."""
    normalization = getattr(pann, "normalization", None)
    if callable(normalization) and "input_normalization" not in meta:
        meta["input_normalization"] = normalization()
    layers = []
    for name, module in poly_modules(pann).items():
        pool = {}
        if isinstance(module, PolyMaxPool2d):
            pool = {"kernel_size": list(module.kernel_size), "stride": list(module.stride),
                    "padding": list(module.padding)}
        layers.append(LayerSpec(name, "maxpool" if pool else "relu", float(module.bound.item()),
                                module.approximation, pool))
    if not layers:
        raise ValueError("the model has no polynomial layers: convert it to a PANN first")
    return PannSpec(tuple(layers), meta, corrections.batchnorm_statistics(pann) if batchnorm_statistics else {})


def _layer(data: Any, where: str, problems: list[str]) -> LayerSpec | None:
    if not isinstance(data, Mapping):
        problems.append(f"{where}: must be an object")
        return None
    missing = [k for k in _LAYER_FIELDS if k not in data]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return None
    name = data["name"]
    before = len(problems)
    if data["kind"] not in ("relu", "maxpool"):
        problems.append(f"{where} ({name}).kind: {data['kind']!r} is not relu or maxpool")
    if not (isinstance(data["B"], (int, float)) and data["B"] > 0):
        problems.append(f"{where} ({name}).B: must be a positive number, got {data['B']!r}")
    if data["family"] not in FAMILIES:
        problems.append(f"{where} ({name}).family: {data['family']!r} is not one of {', '.join(FAMILIES)}")
    try:
        validate_degrees(data["degrees"], odd=data["family"] == "composite")
        approx = ReluApproximation.from_dict(data)
        if [s.degree for s in approx.stages] != list(approx.degrees) or any(
                len(s.coefficients) != s.degree + 1 for s in approx.stages):
            problems.append(f"{where} ({name}).stages: one stage per degree with degree + 1 coefficients")
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(f"{where} ({name}): {exc}")
        return None
    if len(problems) > before:
        return None
    pool = {k: list(data[k]) for k in ("kernel_size", "stride", "padding") if k in data}
    if data["kind"] == "maxpool" and len(pool) != 3:
        problems.append(f"{where} ({name}): a maxpool layer needs kernel_size, stride and padding")
    return LayerSpec(str(name), data["kind"], float(data["B"]), approx, pool)


def from_dict(data: Any, source: str = "spec") -> PannSpec:
    """Validate a parsed spec; raise :class:`SpecError` listing every problem."""
    if not isinstance(data, Mapping):
        raise SpecError(["must be a JSON object"], source)
    if data.get("format") != FORMAT:
        raise SpecError([f"format: expected {FORMAT!r}, got {data.get('format')!r}"], source)
    if data.get("version") not in (1, VERSION):
        raise SpecError([f"version: {data.get('version')!r} is not a known version (this pann reads 1 and "
                         f"{VERSION})"], source)
    problems: list[str] = []
    statistics = _statistics(data, problems)
    raw = data.get("layers")
    if not isinstance(raw, list) or not raw:
        raise SpecError(["layers: must be a non-empty list"], source)
    layers = [_layer(item, f"layers[{i}]", problems) for i, item in enumerate(raw)]
    names = [layer.name for layer in layers if layer is not None]
    problems += [f"layers: {n!r} appears twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise SpecError(problems, source)
    meta = {k: v for k, v in data.items() if k not in ("format", "version", "layers", "batchnorm")}
    return PannSpec(tuple(layers), meta, statistics)


def _statistics(data: Mapping[str, Any], problems: list[str]) -> dict[str, dict[str, list[float]]]:
    """The batch-norm statistics of a version-2 spec (a version-1 spec has none)."""
    if data.get("version") == 1:
        if "batchnorm" in data:
            problems.append("batchnorm: batch-norm statistics need version 2")
        return {}
    raw = data.get("batchnorm")
    if not isinstance(raw, Mapping) or not raw:
        problems.append("batchnorm: version 2 needs a non-empty object of each norm's running statistics")
        return {}
    statistics = {}
    for name, entry in raw.items():
        values = {k: entry.get(k) for k in _STATISTICS} if isinstance(entry, Mapping) else {}
        numbers = all(isinstance(v, list) and v and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
                      for v in values.values())
        if not values or not numbers or len(values["running_mean"]) != len(values["running_var"]) \
                or min(values["running_var"]) < 0:
            problems.append(f"batchnorm.{name}: needs running_mean and running_var, lists of finite numbers of one "
                            "length, the variances >= 0")
            continue
        statistics[str(name)] = {k: [float(x) for x in v] for k, v in values.items()}
    return statistics


def load(path: str | Path) -> PannSpec:
    """Read and validate a spec file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError([f"not valid JSON: {exc}"], str(path)) from exc
    return from_dict(data, str(path))


def apply(observed: nn.Module, spec: PannSpec, **options: Any) -> nn.Module:
    """The PANN of a prepared model with each layer's approximation and ``B`` taken from ``spec``.

    Raises ``ValueError`` naming the layers of the spec that the model lacks and those it has that the spec
    lacks, or a layer whose kind differs. ``options`` go to :func:`pann.conversion.flow.convert` (``dtype``,
    ``compiled``).
    The spec's batch-norm statistics, if any, replace the model's (``ValueError`` when they do not fit).
    """
    found = observers(observed)
    check_names(spec.approximations, found, "the spec's layers")
    kinds = {name: "maxpool" if "MaxPool" in type(m).__name__ else "relu" for name, m in found.items()}
    wrong = [f"{layer.name} is a {kinds[layer.name]} in the model" for layer in spec.layers
             if layer.kind != kinds[layer.name]]
    if wrong:
        raise ValueError("the spec's layers do not fit the model: " + "; ".join(wrong))
    pann = convert(observed, spec.approximations, bounds=spec.bounds, **options)
    if spec.batchnorm:
        corrections.set_batchnorm_statistics(pann, spec.batchnorm)
    return pann
