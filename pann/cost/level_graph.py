"""Read a PANN's ``torch.fx`` graph into the level graph of :mod:`pann.cost.bootstrap_placement`.

Level costs (all from the :class:`~pann.cost.preset.CostPreset`):

* convolution with a batch norm folded into it: ``levels.conv``; linear layer ``levels.linear``;
  average pooling ``levels.avgpool``; a batch norm that follows no convolution / linear layer,
  a multiplication by a constant that does not feed one, a strided subsample (a mask): ``levels.scale``;
  additions, padding, reshapes: free.
* polynomial ReLU ``x (1 + p(x / B)) / 2`` with ``p = p_k o ... o p_1``: a fork-join whose sign branch
  costs ``levels.scale`` for the ``1/B`` prescale unless it is folded (``prescale_folded``: always, never, or
  ``where-exact``: as ``pann fhe-check`` folds it, :func:`pann.fhe.graph.fold_prescales`: where the ReLU's input
  is the output of a convolution, batch norm or linear layer that feeds nothing else, or of a residual add that
  feeds nothing else and whose inputs are such layers, a channel pad (a convolution when encrypted) or another
  ReLU whose other readers are linear layers), then
  ``ceil(log2(d_i + 1))`` and :func:`~pann.approximation.polynomial_cost.polynomial_multiplications` per stage, and
  whose join (the final multiplication) costs one level and one multiplication; a direct
  polynomial of degree ``d`` costs ``ceil(log2(d + 1))`` (+ the prescale).
* ``k_h x k_w`` max-pool: ``ceil(log2(k_h k_w))`` rounds of ``b + ReLU(a - b)``, each a fork-join.
* a join (residual add, product of two ciphertexts) takes its inputs at the lower level;
  a product of two ciphertexts costs one level and one multiplication.

A bootstrap may sit after every operation, between the stages of a composite, and at
the start of every branch.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from pann.approximation import polynomial_cost
from pann.approximation.composite import ReluApproximation
from pann.cost.bootstrap_placement import Boot, Op, Parallel, Series
from pann.cost.preset import WHERE_EXACT, CostPreset
from pann.conversion.modules import ObservedMaxPool2d, ObservedReLU, PolyMaxPool2d, PolyReLU

ACTIVATIONS = (PolyReLU, PolyMaxPool2d, ObservedReLU, ObservedMaxPool2d)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AVGPOOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_FREE_MODULES = (nn.Identity, nn.Flatten, nn.Dropout)
_FREE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, torch.add, torch.sub,
                   torch.flatten, torch.reshape, torch.cat, torch.squeeze, torch.unsqueeze, F.pad, F.dropout,
                   operator.getitem}
_FREE_METHODS = {"add", "add_", "sub", "sub_", "neg", "flatten", "view", "reshape", "permute", "contiguous",
                 "squeeze", "unsqueeze", "transpose", "expand", "float", "to", "type_as", "clone"}
_SCALE_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_SCALE_METHODS = {"mul", "mul_", "div", "div_"}
_AVGPOOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool1d, torch.mean}
_METADATA_METHODS = {"size", "dim", "numel", "ndimension"}


def level_graph(graph: fx.GraphModule, preset: CostPreset,
                approximations: dict[str, ReluApproximation]) -> Series:
    """The level graph of ``graph``: ``approximations`` maps every activation layer
    (:data:`ACTIVATIONS`) to its ReLU approximation. Raises ``ValueError`` listing the
    operations it does not know, or naming the node where the graph is not series-parallel."""
    return _LevelGraph(graph, preset, approximations).build()


def _relu(name: str, approx: ReluApproximation, preset: CostPreset, folded: bool | None = None) -> list:
    """The blocks of one polynomial ReLU (see the module docstring); ``folded`` says whether its 1/B prescale is
    folded into the layer before (default: the preset's ``prescale_folded`` when it is true or false)."""
    sign: list = [Boot(f"{name}: before its polynomial")]
    if not (preset.prescale_folded is True if folded is None else folded):
        sign += [Op(f"{name} 1/B prescale", preset.levels.scale, "scale", activation=True),
                 Boot(f"{name}: after the 1/B prescale")]
    for i, degree in enumerate(approx.degrees, 1):
        stage = f"{name} stage {i}/{len(approx.degrees)} (degree {degree})"
        sign += [Op(stage, polynomial_cost.polynomial_depth(degree), "polynomial",
                    polynomial_cost.polynomial_multiplications(degree), activation=True), Boot(f"after {stage}")]
    if approx.family != "composite":
        return sign
    final = f"{name} x(1 + p)/2"
    return [Parallel([Series(sign), Series([Boot(f"{name}: on x, before x(1 + p)/2")])]),
            Op(final, 1, "polynomial", 1, activation=True)]


def _maxpool(name: str, module: nn.Module, approx: ReluApproximation, preset: CostPreset) -> list:
    kh, kw = nn.modules.utils._pair(module.kernel_size)
    rounds = math.ceil(math.log2(kh * kw))
    blocks: list = []
    for r in range(1, rounds + 1):
        step = f"{name} round {r}/{rounds}"
        relu = Series([Boot(f"{step}: before ReLU(a - b)"), *_relu(f"{step} ReLU(a - b)", approx, preset)])
        blocks += [Parallel([relu, Series([Boot(f"{step}: on b")])]), Op(f"{step} b + ReLU(a - b)", 0),
                   Boot(f"after {step}")]
    return blocks[:-1]


class _LevelGraph:
    """Reads an fx graph into nested :class:`Series` / :class:`Parallel` blocks.

    Each value is an open branch ``(fork, items)``: the blocks from the fork it leaves
    (``None`` for the input) up to the value. A node with several inputs joins branches
    of one fork; when a fork has a single open branch left, that branch closes into a
    :class:`Parallel` block and continues the fork's own branch.
    """

    def __init__(self, graph: fx.GraphModule, preset: CostPreset, approximations: dict[str, ReluApproximation]):
        self.preset, self.approximations = preset, approximations
        self.modules = dict(graph.named_modules())
        self.nodes = list(graph.graph.nodes)
        self.data = set()
        for node in self.nodes:
            if node.op == "placeholder" or node.op != "get_attr" and not self._metadata(node) and \
                    any(i in self.data for i in node.all_input_nodes):
                self.data.add(node)
        self.users = {n: [u for u in n.users if u in self.data] for n in self.data}
        self.open: dict[fx.Node, tuple[fx.Node | None, list]] = {}
        self.live = {n: len(users) for n, users in self.users.items() if len(users) > 1}
        self.rescaled: set[fx.Node] = set()  # ReLUs whose output carries a later ReLU's 1/B (where-exact)

    def _metadata(self, node: fx.Node) -> bool:
        return (node.op == "call_method" and node.target in _METADATA_METHODS
                or node.op == "call_function" and node.target is getattr)

    def build(self) -> Series:
        unknown, root = [], Series([])
        for node in self.nodes:
            if node not in self.data:
                continue
            if node.op == "placeholder":
                self.open[node] = (None, [Boot(f"on the input {node.name}")])
                continue
            fork, items = self._join(node, [i for i in node.all_input_nodes if i in self.data])
            if node.op == "output":
                if fork is not None:
                    raise ValueError(f"the graph is not series-parallel: a branch from {self._label(fork)} "
                                     "never rejoins the output")
                root = Series(items)
                continue
            blocks = self._blocks(node)
            if blocks is None:
                unknown.append(self._describe(node))
                blocks = []
            self.open[node] = (fork, [*items, *blocks, Boot(f"after {self._label(node)}")])
        if unknown:
            raise ValueError("cannot cost the model; operations the cost model does not know: " + ", ".join(unknown))
        return root

    def _branch(self, value: fx.Node, user: fx.Node) -> tuple[fx.Node | None, list]:
        """The open branch along which ``user`` reads ``value``."""
        if value in self.live:
            return value, [Boot(f"between {self._label(value)} and {self._label(user)}")]
        return self.open.pop(value)

    def _join(self, node: fx.Node, inputs: list[fx.Node]) -> tuple[fx.Node | None, list]:
        """The branch that continues at ``node``: its inputs' branches joined, innermost forks first."""
        branches = [self._branch(i, node) for i in inputs]
        while len(branches) > 1:
            groups: dict = {}
            for branch in branches:
                groups.setdefault(branch[0], []).append(branch)
            fork = next((f for f, group in groups.items() if len(groups) == 1 or f is not None
                         and len(group) == self.live[f]), False)
            if fork is False:
                raise ValueError(f"the graph is not series-parallel: {self._label(node)} joins branches that "
                                 "leave " + " and ".join(sorted(self._label(f) if f else "the input" for f in groups)))
            joined = Parallel([Series(items) for _, items in groups[fork]])
            branches = [b for f, group in groups.items() if f is not fork for b in group]
            if fork is not None:
                self.live[fork] -= len(groups[fork]) - 1
            if fork is None or self.live[fork] > 1:
                branches.append((fork, [joined]))
            else:
                del self.live[fork]
                outer, items = self.open.pop(fork)
                branches.append((outer, [*items, joined]))
        return branches[0]

    def _label(self, node: fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{node.target} ({type(self.modules[node.target]).__name__})"
        return f"{node.name} ({getattr(node.target, '__name__', node.target)})"

    def _feeds_weighted_layer(self, node: fx.Node) -> bool:
        users = self.users[node]
        return len(users) == 1 and users[0].op == "call_module" and \
            isinstance(self.modules[users[0].target], _WEIGHTED)

    def _prescale_folded(self, node: fx.Node) -> bool:
        """Whether the preset folds this ReLU's 1/B into the layers before it (the rule of
        :func:`pann.fhe.graph.fold_prescales`, read on the PANN's graph)."""
        if self.preset.prescale_folded != WHERE_EXACT:
            return bool(self.preset.prescale_folded)
        (source,) = [i for i in node.all_input_nodes if i in self.data]
        if self._scalable(source):
            return True
        if not (self._is_add(source) and len(self.users[source]) == 1):
            return False
        reads = [self._alias(i, source) for i in source.all_input_nodes if i in self.data]
        if len({value for value, _ in reads}) == 2 and all(
                self._scalable(value) or self._shortcut(value, reader) for value, reader in reads):
            self.rescaled.update(value for value, _ in reads if self._activation(value))
            return True
        return False

    def _alias(self, node: fx.Node, reader: fx.Node) -> tuple[fx.Node, fx.Node]:
        """``(value, reader)``: ``node`` seen through identity modules (an identity shortcut), and who reads it."""
        while node.op == "call_module" and isinstance(self.modules[node.target], (nn.Identity, nn.Dropout)) \
                and len(self.users[node]) == 1:
            node, reader = node.all_input_nodes[0], node
        return node, reader

    def _scalable(self, node: fx.Node) -> bool:
        """A linear layer whose output feeds one layer only (it can take a factor in its weights)."""
        if len(self.users[node]) != 1:
            return False
        if node.op == "call_function" and node.target is F.pad:
            return True  # the option-A shortcut's zero channels: a fixed convolution when encrypted
        if node.op != "call_module":
            return False
        module = self.modules[node.target]
        return isinstance(module, _WEIGHTED) or isinstance(module, _NORMS) and module.affine

    def _shortcut(self, node: fx.Node, reader: fx.Node) -> bool:
        """A ReLU whose readers other than ``reader`` are all linear layers (they can take the factor's inverse)."""
        return self._activation(node) and node not in self.rescaled and all(
            self._linear_reader(u) for u in self.users[node] if u is not reader)

    def _linear_reader(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[node.target], _WEIGHTED)
        subsample = node.op == "call_function" and node.target is operator.getitem and _strided(node.args[1])
        return subsample and all(u.op == "call_function" and u.target is F.pad for u in self.users[node])

    def _activation(self, node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(self.modules[node.target], (PolyReLU, ObservedReLU))

    @staticmethod
    def _is_add(node: fx.Node) -> bool:
        return node.op == "call_function" and node.target in (operator.add, torch.add) \
            or node.op == "call_method" and node.target == "add"

    def _blocks(self, node: fx.Node) -> list | None:
        """The blocks of one operation, or ``None`` for an operation the cost model does not know."""
        levels, label = self.preset.levels, self._label(node)
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, (PolyReLU, ObservedReLU)):
                return _relu(label, self.approximations[node.target], self.preset, self._prescale_folded(node))
            if isinstance(module, (PolyMaxPool2d, ObservedMaxPool2d)):
                return _maxpool(label, module, self.approximations[node.target], self.preset)
            if isinstance(module, _WEIGHTED):
                return [Op(label, levels.linear if isinstance(module, nn.Linear) else levels.conv, "linear")]
            if isinstance(module, _NORMS):
                (source,) = [i for i in node.all_input_nodes if i in self.data]
                folded = source.op == "call_module" and isinstance(self.modules[source.target], _WEIGHTED) \
                    and len(self.users[source]) == 1
                return [] if folded else [Op(label, levels.scale, "scale")]
            if isinstance(module, _AVGPOOLS):
                return [Op(label, levels.avgpool, "linear")]
            return [] if isinstance(module, _FREE_MODULES) else None
        if node.op not in ("call_function", "call_method"):
            return None
        functions = node.op == "call_function"
        if node.target in (_SCALE_FUNCTIONS if functions else _SCALE_METHODS):
            data_args = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node) and a in self.data]
            if len(data_args) > 1:  # a product of two ciphertexts
                return [Op(label, 1, "polynomial", 1)]
            return [] if self._feeds_weighted_layer(node) else [Op(label, levels.scale, "scale")]
        if node.target in (_AVGPOOL_FUNCTIONS if functions else {"mean"}):
            return [Op(label, levels.avgpool, "linear")]
        if functions and node.target is operator.getitem and _strided(node.args[1]):
            return [Op(label, levels.scale, "scale")]  # subsampling: a mask multiplication
        return [] if node.target in (_FREE_FUNCTIONS if functions else _FREE_METHODS) else None


def _strided(index) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, slice) and i.step not in (None, 1) for i in indices)
