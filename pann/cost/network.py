"""CKKS cost of a whole PANN: levels, the fewest bootstraps, multiplications and an estimated latency.

>>> cost = network_cost(pann, load_preset("mpcnn"))          # a converted PANN
>>> cost = network_cost(prepare(model), load_preset("mpcnn"),  # or observers + approximations
...                     approximations=relu_for_precision(9))
>>> cost.bootstraps, cost.levels, cost.bootstrap_sites[:2]

The network's ``torch.fx`` graph becomes a level graph (:mod:`pann.cost.level_graph`: what each
operation consumes) and its bootstraps are placed by :mod:`pann.cost.bootstrap_placement`:
their number is the exact minimum for series-parallel graphs (chains, VGGs, ResNets),
with a bootstrap allowed after every operation, between the stages of a composite
polynomial and at the start of every branch. Other graphs (DenseNet-style concatenations
of many earlier outputs) are refused with an error naming the node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import fx, nn

from pann.approximation.composite import ReluApproximation
from pann.cost.bootstrap_placement import Boot, Op, Parallel, Series, depth, operations, place_bootstraps
from pann.conversion.flow import prepare
from pann.cost.preset import CostPreset
from pann.cost.level_graph import ACTIVATIONS, level_graph


@dataclass(frozen=True)
class NetworkCost:
    """The CKKS cost of one network under one preset.

    ``levels``: the multiplicative depth of the network (levels along its deepest path,
    what it would need without bootstrapping); ``polynomial_levels``: the levels of all
    its polynomial activations added up; ``latency``: seconds, estimated from the preset's
    time table; ``bootstrap_sites``: where each of the ``bootstraps`` sits, in order.
    """

    preset: str
    bootstraps: int
    levels: int
    polynomial_levels: int
    multiplications: int
    latency: float
    bootstrap_sites: tuple[str, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "bootstrap_sites": list(self.bootstrap_sites)}


def network_cost(model: nn.Module, preset: CostPreset,
                 approximations: ReluApproximation | Mapping[str, ReluApproximation] | None = None) -> NetworkCost:
    """The CKKS cost of ``model`` under ``preset``.

    ``model`` is a PANN from :func:`pann.conversion.flow.convert`, a model prepared by
    :func:`pann.conversion.flow.prepare` (observers, no calibration needed), or any traceable
    model (it is prepared first). ``approximations`` gives the ReLU approximation of
    every activation layer (by the names of :func:`pann.conversion.flow.observers`), or one
    approximation for all; a converted PANN's own approximations are the default.
    Raises ``ValueError`` naming what is wrong: activations without an approximation,
    unknown layer names, operations the model does not cost, a graph that is not
    series-parallel, or an operation deeper than the preset's levels after a bootstrap.
    """
    graph = model if isinstance(model, fx.GraphModule) else prepare(model)
    root = level_graph(graph, preset, _approximations(graph, approximations))
    try:
        sites = place_bootstraps(root, preset.levels.fresh_input, preset.levels.bootstrap)
    except ValueError as exc:
        raise ValueError(f"cost preset {preset.name}: {exc}") from None
    ops = operations(root)
    times = preset.times
    seconds = {"linear": times.linear_level, "scale": times.scale_level}
    latency = len(sites) * times.bootstrap + sum(op.multiplications * times.multiplication
                                                 + op.levels * seconds.get(op.kind, 0.0) for op in ops)
    return NetworkCost(preset=preset.name, bootstraps=len(sites), levels=depth(root),
                       polynomial_levels=sum(op.levels for op in ops if op.activation),
                       multiplications=sum(op.multiplications for op in ops), latency=latency,
                       bootstrap_sites=tuple(sites))


@dataclass(frozen=True)
class LevelStep:
    """One operation along a network's deepest path: its label, the levels left after it, whether it is a
    polynomial activation, and whether a bootstrap refreshed the ciphertext just before it."""

    label: str
    levels_left: int
    activation: bool
    bootstrapped: bool


def level_trace(model: nn.Module, preset: CostPreset,
                approximations: ReluApproximation | Mapping[str, ReluApproximation] | None = None) -> list[LevelStep]:
    """The levels left along ``model``'s deepest path under ``preset``, with the bootstraps of
    :func:`network_cost` (same arguments): at a fork-join (a residual block, a composite ReLU's final product)
    the branch that ends lowest is followed, as the join takes both branches at their lowest level. Operations
    that consume no level are left out. For pictures of an answer: where the levels go, where bootstraps fall."""
    graph = model if isinstance(model, fx.GraphModule) else prepare(model)
    root = level_graph(graph, preset, _approximations(graph, approximations))
    chosen = Counter(place_bootstraps(root, preset.levels.fresh_input, preset.levels.bootstrap))

    def walk(block, level: int, pending: bool) -> tuple[int, bool, list[LevelStep]]:
        if isinstance(block, Op):
            if block.levels == 0:
                return level, pending, []
            level -= block.levels
            return level, False, [LevelStep(block.label, level, block.activation, pending)]
        if isinstance(block, Boot):
            if chosen[block.site]:
                chosen[block.site] -= 1
                return preset.levels.bootstrap, True, []
            return level, pending, []
        if isinstance(block, Series):
            steps = []
            for item in block.items:
                level, pending, more = walk(item, level, pending)
                steps += more
            return level, pending, steps
        if isinstance(block, Parallel):
            return min((walk(branch, level, pending) for branch in block.branches), key=lambda r: r[0])
        return level, pending, []

    return walk(root, preset.levels.fresh_input, False)[2]


def _approximations(graph: fx.GraphModule, given) -> dict[str, ReluApproximation]:
    layers = {name: m for name, m in graph.named_modules() if isinstance(m, ACTIVATIONS)}
    if isinstance(given, ReluApproximation):
        return dict.fromkeys(layers, given)
    given = dict(given or {})
    unknown = sorted(set(given) - set(layers))
    if unknown:
        raise ValueError(f"approximations name layers the model does not have: {', '.join(unknown)}; "
                         f"its activation layers are {', '.join(layers) or 'none'}")
    chosen = {name: given.get(name, getattr(m, "approximation", None)) for name, m in layers.items()}
    missing = [name for name, a in chosen.items() if a is None]
    if missing:
        raise ValueError(f"no approximation for the activation layers {', '.join(missing)}")
    return chosen


