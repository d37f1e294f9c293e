"""Orion modules for the layers of a lowered PANN (:class:`pann.fhe.graph.Plan`).

Written against ``orion-fhe==1.0.2``; :mod:`pann.fhe.backend` imports the library and hands its
``orion.nn`` in, so this module never imports it. A PANN ReLU becomes ``t = x / B`` (Orion's
``Mult``; nothing where :func:`pann.fhe.graph.fold_prescales` folded it into the layer before), our folded
Chebyshev stages in Orion's composite-sign evaluation, and ``t * s(t)``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from torch import nn

from pann.fhe.graph import Layer, Plan
from pann.conversion.modules import chebyshev


@functools.cache
def _classes(on):
    _Sign = on.activation._Sign

    class Stage(on.Chebyshev):
        """One polynomial with fixed Chebyshev coefficients on ``[-1, 1]`` (no fit).

        Orion fuses a Chebyshev into the batch norm or linear layer before it by multiplying in the
        polynomial's own input map and then lowers its depth by the level that map cost. A stage has no such
        map (its input is already ``t``: its prescale is 1), so a fused stage keeps its depth; without this a
        ReLU whose ``1/B`` is folded into its batch norm would be counted a level short, and its ciphertext
        would reach the next bootstrap below the level Orion planned for it."""

        @property
        def depth(self):
            return self._depth

        @depth.setter
        def depth(self, value):
            if getattr(self, "fused", False) and value < self._depth:
                return  # the fuser's "prescale no longer consumes a level": there was none
            self._depth = value

        def __init__(self, coefficients: Sequence[float]):
            tensor = torch.tensor(coefficients, dtype=torch.float64)
            super().__init__(len(coefficients) - 1, lambda x: chebyshev(x, tensor.to(x.dtype)),
                             within_composite=True)
            self.set_coeffs(list(coefficients))
            self.set_depth()

    class Sign(_Sign):
        """Orion's composite sign evaluation with our stages instead of its own fit."""

        def __init__(self, stages: Sequence[Sequence[float]]):
            on.Module.__init__(self)
            self.degrees = [len(c) - 1 for c in stages]
            self.acts = nn.Sequential(*[Stage(c) for c in stages])

        def fit(self):
            pass

    class EncryptedReLU(on.ReLU):
        """``B r(x / B)`` of a PANN ReLU: ``t = x / B`` (given as ``t`` when ``folded``), then ``t * s(t)`` or
        ``s(t)``."""

        def __init__(self, prescale: float, stages: Sequence[Sequence[float]], composite: bool,
                     folded: bool = False):
            on.Module.__init__(self)
            self.composite, self.folded = composite, folded
            self.degrees = [len(c) - 1 for c in stages]
            self.prescale, self.postscale = prescale, 1
            self.mult1 = on.Mult()
            self.sign = Sign(stages) if self.composite else Stage(stages[0])
            if self.composite:
                self.mult2 = on.Mult()

        def fit(self):
            first = self.sign.acts[0] if self.composite else self.sign
            source = first if self.folded else self.mult1
            self.input_min, self.input_max = source.input_min, source.input_max

        def forward(self, x):
            t = x if self.folded else self.mult1(x, self.prescale)
            return self.mult2(t, self.sign(t)) if self.composite else self.sign(t)

    class Network(on.Module):
        """Runs ``steps`` ``(layer, inputs)`` in order, each layer's output named after it; ``on_value``, if set,
        is called with ``(name, output)`` after each (a trace). :meth:`run` runs several encrypted images at once."""

        def __init__(self, layers: dict[str, nn.Module], steps: list[tuple[str, tuple[str, ...]]], output: str):
            super().__init__()
            self.layers = nn.ModuleDict(layers)
            self.steps = steps
            self.output = output
            self.on_value = None
            read = {name: done for done, (_, inputs) in enumerate(steps) for name in inputs}
            # the values no step after this one reads: dropped, so an image holds only the ones still needed
            self._dead = [[name for name in (layer, *inputs) if read.get(name, -1) <= done and name != output]
                          for done, (layer, inputs) in enumerate(steps)]

        def forward(self, x):
            return self.run([x], tracers=None if self.on_value is None else [self.on_value])[0]

        def run(self, xs: list, watches: list | None = None, tracers: list | None = None, together=None) -> list:
            """The outputs for the inputs ``xs`` (several encrypted images), layer by layer: each layer runs on
            every image before the next, inside ``together(module, inputs)`` where that is given (a context that
            may evaluate the layer's linear transforms on all the images at once). ``watches[k]``, if given, is
            told ``begin()`` before image ``k`` runs a layer and is called with ``(layers done, layers, name,
            output)`` after; ``tracers[k]`` with ``(name, output)``."""
            envs = [{"input": x} for x in xs]
            for done, (layer, inputs) in enumerate(self.steps, 1):
                module = self.layers[layer]
                args = [tuple(env[i] for i in inputs) for env in envs]
                with together(module, [a[0] for a in args]) if together else contextlib.nullcontext():
                    for k, env in enumerate(envs):
                        if watches is not None:
                            watches[k].begin()
                        env[layer] = module(*args[k])
                        if tracers is not None:
                            tracers[k](layer, env[layer])
                        if watches is not None:
                            watches[k](done, len(self.steps), layer, env[layer])
                del args
                for env in envs:
                    for name in self._dead[done - 1]:
                        env.pop(name, None)
            return [env[self.output] for env in envs]

    return Stage, EncryptedReLU, Network


def _layer(layer: Layer, on, EncryptedReLU) -> nn.Module:
    o = layer.options
    if layer.kind == "conv2d":
        w = o["weight"]
        module = on.Conv2d(w.shape[1] * o["groups"], w.shape[0], tuple(w.shape[2:]), o["stride"], o["padding"],
                           o["dilation"], o["groups"], bias=o["bias"] is not None)
    elif layer.kind == "linear":
        module = on.Linear(o["weight"].shape[1], o["weight"].shape[0], bias=o["bias"] is not None)
    elif layer.kind == "batchnorm":
        cls = on.BatchNorm2d if o["dims"] == 2 else on.BatchNorm1d
        module = cls(o["running_mean"].numel(), eps=o["eps"], affine=o["weight"] is not None)
        module.running_mean.copy_(o["running_mean"])
        module.running_var.copy_(o["running_var"])
    elif layer.kind == "relu":
        return EncryptedReLU(o["prescale"], o["stages"], o["family"] == "composite", o.get("folded", False))
    elif layer.kind == "avgpool":
        return on.AvgPool2d(o["kernel_size"], o["stride"])
    elif layer.kind == "adaptive_avgpool":
        return on.AdaptiveAvgPool2d(o["output_size"])
    else:
        return {"flatten": on.Flatten, "add": on.Add}[layer.kind]()
    with torch.no_grad():
        for key in ("weight", "bias"):
            if o.get(key) is not None:
                getattr(module, key).copy_(o[key])
    return module


def network(on, plan: Plan) -> nn.Module:
    """The Orion network (``on`` is ``orion.nn``) running ``plan``'s layers in order, in cleartext mode."""
    _, EncryptedReLU, Network = _classes(on)
    layers = {layer.name: _layer(layer, on, EncryptedReLU) for layer in plan.layers}
    net = Network(layers, [(layer.name, layer.inputs) for layer in plan.layers], plan.output)
    net.eval()  # Orion's eval() returns None
    return net
