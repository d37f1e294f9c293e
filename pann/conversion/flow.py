"""Turn a ``torch.nn.Module`` into a PANN: prepare, calibrate, convert.

>>> observed = prepare(model)                 # ReLU / max-pool -> range observers
>>> calibrate(observed, training_batches)     # record the input range of each
>>> pann = convert(observed, relu_for_precision(9), scope="layer", margin=1.1)

:func:`prepare` traces the model with ``torch.fx``, so functional calls
(``F.relu``, ``torch.relu``, ``x.relu()``, ``F.max_pool2d``) are caught as well as
modules. Operations that are not polynomial and have no replacement raise
:class:`NonPolynomialError` naming each of them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from pann.approximation.composite import ReluApproximation
from pann.conversion.groups import check_names
from pann.conversion.modules import ObservedMaxPool2d, ObservedReLU, PolyMaxPool2d, PolyReLU

Scope = Literal["global", "layer"]

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
_MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}

_NON_POLYNOMIAL_MODULES = (
    nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax, nn.ELU, nn.SELU, nn.CELU,
    nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.MaxPool1d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)
_NON_POLYNOMIAL_FUNCTIONS = {
    F.gelu, F.silu, F.sigmoid, torch.sigmoid, F.tanh, torch.tanh, F.softmax, torch.softmax,
    F.log_softmax, torch.log_softmax, F.elu, F.selu, F.celu, F.leaky_relu, F.relu6, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.mish, F.softplus, F.max_pool1d, F.max_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.layer_norm,
    F.group_norm, F.instance_norm, torch.max, torch.amax, torch.min, torch.amin, torch.maximum,
    torch.minimum, torch.clamp, torch.clip, torch.abs, torch.exp, torch.log, torch.sqrt,
    torch.rsqrt, torch.sign, torch.where,
}
_NON_POLYNOMIAL_METHODS = {
    "sigmoid", "tanh", "softmax", "log_softmax", "max", "amax", "min", "amin", "clamp", "clip",
    "abs", "exp", "log", "sqrt", "rsqrt", "sign",
}


class NonPolynomialError(ValueError):
    """The model holds operations that a PANN cannot evaluate."""


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f"{node.name} (Tensor.{node.target})"
    return f"{node.name} ({getattr(node.target, '__name__', node.target)})"


def _maxpool_arguments(node: fx.Node) -> tuple:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    values = dict(zip(names, node.args[1:]))
    values.update(node.kwargs)
    return values.get("kernel_size"), values.get("stride"), values.get("padding", 0), \
        values.get("dilation", 1), values.get("ceil_mode", False), values.get("return_indices", False)


def _owner(node: fx.Node) -> str:
    """Qualified name of the module whose ``forward`` made the functional call ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = next(reversed(stack.values()))[0]
    return path if isinstance(path, str) else ""


def _swap_call(graph_module: fx.GraphModule, node: fx.Node, replacement: nn.Module) -> None:
    """Replace the functional call ``node`` by a call of the new submodule ``replacement``."""
    owner = _owner(node)
    name = f"{owner}_{node.name}".strip("_").replace(".", "_")
    replacement.owner = owner
    graph_module.add_submodule(name, replacement)
    with graph_module.graph.inserting_after(node):
        call = graph_module.graph.call_module(name, args=(node.args[0],))
    node.replace_all_uses_with(call)
    graph_module.graph.erase_node(node)


def replace_activations(model: nn.Module, relu: Callable[[], nn.Module],
                        maxpool: Callable[[Any, Any, Any], nn.Module] | None = None,
                        require_polynomial: bool = True) -> fx.GraphModule:
    """Copy ``model`` with every ReLU (module or functional call) replaced by ``relu()``
    and, when ``maxpool`` is given, every 2-d max-pool by ``maxpool(kernel, stride, padding)``.

    With ``require_polynomial`` raises :class:`NonPolynomialError` listing every other
    operation a PANN cannot evaluate. Raises ``ValueError`` if the model cannot be traced
    by ``torch.fx``.
    """
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises many types for untraceable code
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    modules = dict(graph_module.named_modules())
    unsupported = []
    for node in list(graph_module.graph.nodes):
        replacement: nn.Module | None = None
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, nn.ReLU):
                replacement = relu()
            elif isinstance(module, nn.MaxPool2d) and maxpool is not None:
                if module.dilation not in (1, (1, 1)) or module.ceil_mode or module.return_indices:
                    unsupported.append(_describe(node, modules) + " with dilation/ceil_mode/return_indices")
                    continue
                replacement = maxpool(module.kernel_size, module.stride, module.padding)
            elif isinstance(module, _NON_POLYNOMIAL_MODULES):
                unsupported.append(_describe(node, modules))
            if replacement is not None:
                replacement.owner = node.target.rpartition(".")[0]
                graph_module.set_submodule(node.target, replacement)
            continue
        if node.op == "call_function" and node.target in _RELU_FUNCTIONS or \
                node.op == "call_method" and node.target in _RELU_METHODS:
            replacement = relu()
        elif node.op == "call_function" and node.target in _MAXPOOL_FUNCTIONS and maxpool is not None:
            kernel, stride, padding, dilation, ceil_mode, indices = _maxpool_arguments(node)
            if dilation not in (1, (1, 1)) or ceil_mode or indices:
                unsupported.append(_describe(node, modules) + " with dilation/ceil_mode/return_indices")
                continue
            replacement = maxpool(kernel, stride, padding)
        elif (node.op == "call_function" and node.target in _NON_POLYNOMIAL_FUNCTIONS
              or node.op == "call_method" and node.target in _NON_POLYNOMIAL_METHODS):
            unsupported.append(_describe(node, modules))
            continue
        if replacement is not None:
            _swap_call(graph_module, node, replacement)
    if unsupported and require_polynomial:
        raise NonPolynomialError("cannot convert to a PANN; non-polynomial operations without a "
                                 "polynomial replacement: " + ", ".join(unsupported))
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def prepare(model: nn.Module) -> fx.GraphModule:
    """Copy ``model`` (in eval mode) with every ReLU and 2-d max-pool replaced by a range observer.

    Raises :class:`NonPolynomialError` listing every operation a PANN cannot evaluate
    (other activations, normalisations by data-dependent statistics, other poolings),
    and ``ValueError`` if the model cannot be traced by ``torch.fx``.
    """
    return replace_activations(model, ObservedReLU, ObservedMaxPool2d).eval()


def observers(model: nn.Module) -> dict[str, ObservedReLU | ObservedMaxPool2d]:
    """The range observers of a prepared model, by qualified name, in execution order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (ObservedReLU, ObservedMaxPool2d))}


@torch.no_grad()
def calibrate(observed: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Run ``batches`` of inputs through a prepared model to record activation ranges."""
    observed.eval()
    seen = False
    for inputs in batches:
        observed(inputs)
        seen = True
    if not seen:
        raise ValueError("calibration saw no data")


def interval_bounds(observed: nn.Module, scope: Scope = "layer", margin: float = 1.0) -> dict[str, float]:
    """``B`` of each observer: ``margin`` times its largest ``|x|`` (``scope='layer'``)
    or times the largest over all observers (``scope='global'``). Max-pools get twice
    that, since they approximate ReLU of a difference of two inputs."""
    if scope not in ("global", "layer"):
        raise ValueError(f"interval scope must be 'global' or 'layer', got {scope!r}")
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    found = observers(observed)
    if not found:
        return {}
    ranges = {name: float(m.max_abs) for name, m in found.items()}
    if max(ranges.values()) == 0:
        raise ValueError("no activation range recorded: run calibrate() on data first")
    if scope == "global":
        ranges = dict.fromkeys(ranges, max(ranges.values()))
    return {name: margin * max(r, 1e-6) * (2 if isinstance(found[name], ObservedMaxPool2d) else 1)
            for name, r in ranges.items()}


Approximations = ReluApproximation | Mapping[str, ReluApproximation]


def convert(observed: nn.Module, approximation: Approximations, scope: Scope = "layer", margin: float = 1.0,
            dtype: torch.dtype = torch.float32, compiled: bool = True,
            bounds: Mapping[str, float] | None = None) -> nn.Module:
    """A copy of a calibrated model with every observer swapped for its polynomial module
    (evaluated in ``dtype``, by a fused compiled kernel unless ``compiled=False``).

    ``approximation`` is one approximation for every layer, or one per layer (by the names of
    :func:`observers`). ``bounds`` gives each layer's ``B`` explicitly (e.g. from a spec); by default it
    comes from the calibrated ranges (:func:`interval_bounds` with ``scope`` and ``margin``).
    """
    found = observers(observed)
    if isinstance(approximation, Mapping):
        check_names(approximation, found, "per-layer approximations")
    if bounds is None:
        bounds = interval_bounds(observed, scope, margin)
    else:
        check_names(bounds, found, "per-layer bounds")
    pann = copy.deepcopy(observed)
    for name, observer in observers(pann).items():
        approx = approximation[name] if isinstance(approximation, Mapping) else approximation
        if isinstance(observer, ObservedMaxPool2d):
            poly = PolyMaxPool2d(approx, bounds[name], observer.kernel_size, observer.stride,
                                 observer.padding, dtype=dtype, compiled=compiled)
        else:
            poly = PolyReLU(approx, bounds[name], dtype=dtype, compiled=compiled)
        poly.owner = getattr(observer, "owner", "")
        pann.set_submodule(name, poly)
    return pann


def poly_modules(pann: nn.Module) -> dict[str, PolyReLU | PolyMaxPool2d]:
    """The polynomial layers of a PANN, by qualified name, in execution order."""
    return {name: m for name, m in pann.named_modules() if isinstance(m, (PolyReLU, PolyMaxPool2d))}


def out_of_range(pann: nn.Module) -> dict[str, float]:
    """Fraction of inputs outside ``[-B, B]`` per polynomial layer since the last reset."""
    return {name: m.out_of_range.item() / max(m.seen.item(), 1) for name, m in poly_modules(pann).items()}


def out_of_range_rate(pann: nn.Module) -> float:
    """Fraction of all polynomial-layer inputs outside their ``[-B, B]`` since the last reset."""
    modules = poly_modules(pann).values()
    return sum(m.out_of_range.item() for m in modules) / max(sum(m.seen.item() for m in modules), 1)


def reset_out_of_range(pann: nn.Module) -> None:
    for m in poly_modules(pann).values():
        m.out_of_range.zero_()
        m.seen.zero_()
