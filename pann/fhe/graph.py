"""Lower a converted PANN (``torch.fx`` graph with :class:`~pann.conversion.modules.PolyReLU`) to the
layer list an encrypted back end builds from.

Each :class:`Layer` is plain data: a kind (``conv2d``, ``batchnorm``, ``linear``, ``avgpool``,
``adaptive_avgpool``, ``flatten``, ``add``, ``relu``), its tensors and options, and the names of
its inputs. What comes before the first layer (the classifier's input normalisation) is
computed in the clear by the data owner before encryption. The CIFAR ResNets' option-A
shortcut (``x[:, :, ::2, ::2]`` then zero channels by ``F.pad``) becomes a fixed 1x1
stride-2 convolution whose extra output channels have zero weights; it reproduces the
shortcut exactly. Anything else that cannot be expressed raises
:class:`UnsupportedLayerError` naming every such layer at once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pann.conversion.modules import PolyMaxPool2d, PolyReLU


class UnsupportedLayerError(ValueError):
    """Layers of the PANN that have no encrypted counterpart."""


@dataclass
class Layer:
    name: str
    kind: str
    inputs: tuple[str, ...]
    options: dict = field(default_factory=dict)
    size: int = 0  # values in its output, per image


@dataclass
class Plan:
    """``layers`` in execution order; the encrypted input is the value of fx node ``input``."""

    input: str
    layers: list[Layer]
    output: str


_ADD = {operator.add, torch.add}
_FLATTEN = {torch.flatten}


def lower(pann: fx.GraphModule, example: torch.Tensor) -> Plan:
    """The :class:`Plan` of ``pann`` for inputs shaped like ``example`` (one image suffices)."""
    if not isinstance(pann, fx.GraphModule):
        raise TypeError(f"expected a converted PANN (torch.fx.GraphModule), got {type(pann).__name__}")
    pann = copy.deepcopy(pann)  # shape propagation counts out-of-range inputs: leave the caller's alone
    for module in pann.modules():
        if isinstance(module, (PolyReLU, PolyMaxPool2d)):
            module.compiled = False  # one eager pass; no kernel compilation
    dtype = next((p.dtype for p in pann.parameters() if p.is_floating_point()), torch.float32)
    ShapeProp(pann).propagate(example[:1].to(dtype))
    modules = dict(pann.named_modules())
    plain: set[str] = set()        # computed in the clear before encryption
    alias: dict[str, str] = {}     # node -> the layer output it stands for
    pending: dict[str, tuple[str, int]] = {}  # subsampled node -> (source, stride)
    layers: list[Layer] = []
    errors: list[str] = []
    encrypted_input = None
    output = None
    for node in pann.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            plain.add(node.name)
            continue
        if node.op == "output":
            output = alias.get(node.args[0].name, node.args[0].name)
            continue
        sources = [a for a in node.all_input_nodes]
        if node.op != "call_module" and all(s.name in plain for s in sources):
            plain.add(node.name)
            continue
        inputs = []
        for s in sources:
            if s.name in plain and s.op != "get_attr":
                if encrypted_input not in (None, s.name):
                    errors.append(f"{node.name}: a second clear input ({s.name}) enters the encrypted network")
                encrypted_input = s.name
                inputs.append("input")
            elif s.op != "get_attr":
                inputs.append(alias.get(s.name, s.name))
        try:
            layer = _lower_node(node, modules, tuple(inputs), pending)
        except UnsupportedLayerError as exc:
            errors.append(str(exc))
            continue
        if layer is None:
            alias[node.name] = inputs[0] if inputs else node.name
        elif layer != "pending":
            layer.size = math.prod(_shape(node)[1:])
            layers.append(layer)
    if errors:
        raise UnsupportedLayerError("cannot run this PANN encrypted: " + "; ".join(errors))
    for name, (source, stride) in pending.items():
        if any(name in layer.inputs for layer in layers) or output == name:
            raise UnsupportedLayerError(f"cannot run this PANN encrypted: {name}: a strided slice "
                                        "used other than by a channel pad")
    return Plan(encrypted_input or "input", layers, output)


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _lower_node(node: fx.Node, modules: dict, inputs: tuple[str, ...], pending: dict):
    if node.op == "call_module":
        return _lower_module(node, modules[node.target], inputs)
    target = node.target
    if target in _ADD and len(inputs) == 2:
        return Layer(node.name, "add", inputs)
    if target is F.adaptive_avg_pool2d:
        return Layer(node.name, "adaptive_avgpool", inputs, {"output_size": node.args[1]})
    if target is F.avg_pool2d:
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
        return Layer(node.name, "avgpool", inputs, {"kernel_size": kernel, "stride": node.kwargs.get("stride")})
    if target in _FLATTEN or node.op == "call_method" and target in ("flatten", "view", "reshape"):
        if len(_shape(node)) == 2:
            return Layer(node.name, "flatten", inputs)
    if target is operator.getitem:
        stride = _subsample_stride(node.args[1])
        if stride:
            pending[node.name] = (inputs[0], stride)
            return "pending"
    if target is F.pad:
        return _channel_pad(node, inputs, pending)
    raise UnsupportedLayerError(f"{node.name} ({getattr(target, '__name__', target)}): an operation the "
                                "encrypted back end does not have")


def _lower_module(node: fx.Node, module: nn.Module, inputs: tuple[str, ...]):
    name = f"{node.name} ({node.target}, {type(module).__name__})"
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return None
    if isinstance(module, PolyMaxPool2d):
        raise UnsupportedLayerError(f"{name}: max-pool has no encrypted form here (Orion lacks it)")
    if isinstance(module, PolyReLU):
        if module.offset is not None:
            raise UnsupportedLayerError(f"{name}: per-channel leakage offsets are not supported encrypted")
        prescale, stages = folded_stages(module.approximation, float(module.bound))
        return Layer(node.name, "relu", inputs, {
            "module": node.target, "family": module.approximation.family, "bound": float(module.bound),
            "degrees": list(module.approximation.degrees), "prescale": prescale, "stages": stages})
    if isinstance(module, nn.Conv2d):
        if module.stride[0] != module.stride[1] or module.padding_mode != "zeros" \
                or isinstance(module.padding, str) or module.padding[0] != module.padding[1]:
            raise UnsupportedLayerError(f"{name}: only equal strides and equal zero padding are supported")
        return Layer(node.name, "conv2d", inputs, {
            "weight": module.weight.detach(), "bias": None if module.bias is None else module.bias.detach(),
            "stride": module.stride[0], "padding": module.padding[0], "dilation": module.dilation[0],
            "groups": module.groups})
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.track_running_stats:
        return Layer(node.name, "batchnorm", inputs, {
            "dims": 2 if isinstance(module, nn.BatchNorm2d) else 1, "eps": module.eps,
            "weight": None if module.weight is None else module.weight.detach(),
            "bias": None if module.bias is None else module.bias.detach(),
            "running_mean": module.running_mean.detach(), "running_var": module.running_var.detach()})
    if isinstance(module, nn.Linear):
        return Layer(node.name, "linear", inputs, {
            "weight": module.weight.detach(), "bias": None if module.bias is None else module.bias.detach()})
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return Layer(node.name, "adaptive_avgpool", inputs, {"output_size": module.output_size})
    if isinstance(module, nn.AvgPool2d) and not module.padding:
        return Layer(node.name, "avgpool", inputs, {"kernel_size": module.kernel_size, "stride": module.stride})
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and len(_shape(node)) == 2:
        return Layer(node.name, "flatten", inputs)
    raise UnsupportedLayerError(f"{name}: no encrypted counterpart")


def _subsample_stride(index) -> int | None:
    """``s`` for an index ``[:, :, ::s, ::s]``, else ``None``."""
    if not (isinstance(index, tuple) and len(index) == 4 and all(isinstance(i, slice) for i in index)):
        return None
    full = slice(None, None, None)
    (n, c, h, w) = index
    if n == full and c == full and h == w and h.start is None and h.stop is None and (h.step or 1) > 1:
        return h.step
    return None


def _channel_pad(node: fx.Node, inputs: tuple[str, ...], pending: dict) -> Layer:
    """``F.pad(x, (0, 0, 0, 0, a, b))`` (zero channels), after an optional subsample: one fixed 1x1 conv."""
    pad = tuple(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    mode = node.kwargs.get("mode", "constant")
    value = node.kwargs.get("value", 0.0) or 0.0
    if len(pad) != 6 or any(pad[:4]) or mode != "constant" or value != 0:
        raise UnsupportedLayerError(f"{node.name} (pad {pad}): only zero channel padding is supported")
    source, stride = pending.pop(inputs[0], (inputs[0], 1))
    channels = node.all_input_nodes[0].meta["tensor_meta"].shape[1]
    before, after = pad[4], pad[5]
    weight = torch.zeros(before + channels + after, channels, 1, 1)
    weight[before + torch.arange(channels), torch.arange(channels), 0, 0] = 1.0
    return Layer(node.name, "conv2d", (source,), {"weight": weight, "bias": None, "stride": stride,
                                                   "padding": 0, "dilation": 1, "groups": 1})


def folded_stages(approximation, bound: float) -> tuple[float, list[list[float]]]:
    """``(prescale, stages)`` of ``B r(x / B)`` for evaluation on ``[-1, 1]``.

    With ``t = prescale * x = x / (B w_1)`` the composite is ``x (1 + p(x / B)) / 2 = t s(t)``
    where ``s`` chains the stages ``sum_k c_k T_k(u)`` on ``[-1, 1]``: stage ``i``'s coefficients
    carry the next stage's ``1 / w_{i+1}`` and the last stage's carry ``B (1 + .) / 2``, all
    exact in the Chebyshev basis. A direct approximation is ``s(t)`` with ``B c_k``.
    """
    stages = approximation.stages
    composite = approximation.family == "composite"
    folded = []
    for k, stage in enumerate(stages):
        coef = np.array(stage.coefficients, dtype=np.float64)
        if k + 1 < len(stages):
            coef = coef / stages[k + 1].width
        elif composite:
            coef = coef * bound / 2
            coef[0] += bound / 2
        else:
            coef = coef * bound
        folded.append(coef.tolist())
    return 1.0 / (bound * stages[0].width), folded


def fold_prescales(plan: Plan) -> tuple[Plan, list[str]]:
    r"""Fold each ReLU's ``1 / (B w_1)`` into the layers that produce its input, where that is exact, so that the
    ReLU starts from ``t`` directly and saves the level its own multiplication by ``c`` costs.

    * After a convolution, a linear layer or an affine batch norm whose output feeds only this ReLU:

      .. math:: c\,(W x + b) = (c W) x + c b, \qquad c\,(\gamma \hat{x} + \beta) = (c \gamma) \hat{x} + c \beta

    * After a residual add that feeds only this ReLU, ``c (u + v) = c u + c v``: each input of the add takes ``c``
      as above when it is such a layer, or, when it is another ReLU's output ``y`` (an identity shortcut), that
      ReLU's last stage is multiplied by ``c`` (a polynomial's output scales with its coefficients) and every
      other layer reading ``y`` is given ``W / c`` instead of ``W``, so ``(W / c)(c y) + b = W y + b``. That
      needs those other readers to be convolutions or linear layers, and ``y`` scaled for one add only.

    Where neither holds the ReLU keeps its prescale. Returns the new plan (the given one is not changed) and
    the names of the ReLUs that kept theirs."""
    consumers: dict[str, list[str]] = {}
    for layer in plan.layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer.name)
    layers = [dataclasses.replace(l, options=dict(l.options)) for l in plan.layers]
    producers = {layer.name: layer for layer in layers}
    rescaled: set[str] = set()  # ReLUs whose output carries another ReLU's c
    kept = []

    def alone(source: Layer | None) -> bool:
        return source is not None and len(consumers[source.name]) == 1 and source.name != plan.output

    def scalable(source: Layer | None) -> bool:  # a linear layer that feeds one layer only: takes c in W and b
        return alone(source) and (source.kind in ("conv2d", "linear")
                                  or source.kind == "batchnorm" and source.options["weight"] is not None)

    def shortcut(source: Layer | None, add: str) -> bool:  # a ReLU whose other readers are linear layers
        return source is not None and source.kind == "relu" and source.name not in rescaled \
            and source.name != plan.output and all(producers[r].kind in ("conv2d", "linear")
                                                   for r in consumers[source.name] if r != add)

    for layer in layers:
        if layer.kind != "relu":
            continue
        c = layer.options["prescale"]
        source = producers.get(layer.inputs[0])
        if scalable(source):
            _scale(source, c)
        elif alone(source) and source.kind == "add" and all(
                scalable(producers.get(i)) or shortcut(producers.get(i), source.name) for i in source.inputs) \
                and len(set(source.inputs)) == len(source.inputs):
            for name in source.inputs:
                branch = producers[name]
                if branch.kind == "relu":
                    stages = [list(s) for s in branch.options["stages"]]
                    stages[-1] = [v * c for v in stages[-1]]
                    branch.options["stages"] = stages
                    rescaled.add(branch.name)
                    for reader in consumers[branch.name]:
                        if reader != source.name:
                            producers[reader].options["weight"] = producers[reader].options["weight"] / c
                else:
                    _scale(branch, c)
        else:
            kept.append(layer.name)
            continue
        layer.options.update(prescale=1.0, folded=True)
    return Plan(plan.input, layers, plan.output), kept


def _scale(layer: Layer, c: float) -> None:
    """Multiply a linear layer's output by ``c``: its weight and bias (a batch norm's affine ones)."""
    for key in ("weight", "bias"):
        if layer.options.get(key) is not None:
            layer.options[key] = layer.options[key] * c


def layer_depth(layer: Layer, producers: dict[str, Layer]) -> int:
    """Levels one layer consumes under CKKS as Orion evaluates it: a linear map 1, a batch norm
    0 after a convolution or linear layer (folded into it) and 2 otherwise, a ReLU
    ``sum ceil(log2(d + 1)) (+ 1 for the composite's product)``, plus 1 for its ``1/B`` unless that is folded
    into the layer before (:func:`fold_prescales`)."""
    if layer.kind in ("conv2d", "linear", "avgpool", "adaptive_avgpool"):
        return 1
    if layer.kind == "batchnorm":
        parent = producers.get(layer.inputs[0])
        return 0 if parent is not None and parent.kind in ("conv2d", "linear") else 2
    if layer.kind == "relu":
        o = layer.options
        return (not o.get("folded")) + sum(math.ceil(math.log2(len(c))) for c in o["stages"]) \
            + (o["family"] == "composite")
    return 0


def largest_tensor(plan: Plan) -> int:
    """Values per image of the network's largest tensor: at most what a bootstrap has to take."""
    return max((layer.size for layer in plan.layers), default=0)


def plan_depth(plan: Plan) -> int:
    """Multiplicative depth of the network: levels on its deepest input-to-output path."""
    producers = {layer.name: layer for layer in plan.layers}
    depth = {"input": 0}
    for layer in plan.layers:
        depth[layer.name] = max(depth[i] for i in layer.inputs) + layer_depth(layer, producers)
    return depth[plan.output]
