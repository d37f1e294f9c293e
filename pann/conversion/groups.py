"""Groups of activation layers that share one precision: the granularity of a per-layer choice.

* ``network``: one group holding every ReLU and max-pool (one alpha for the whole network).
* ``stage``: one group per stage of the network. A stage is the module two levels below the root that
  made the call (``net.layer1`` of a CIFAR ResNet; the stem's ReLU is the stage ``stem``); a stage
  without sub-blocks (a VGG's ``features``) is cut after each max-pool into blocks ``block1``, ``block2``...
* ``layer``: one group per activation layer, named as the layer.

:func:`layer_groups` returns a :class:`LayerGroups`: a mapping from group name to the layer names of
:func:`pann.conversion.flow.observers` in execution order, that knows its granularity. It is built once (a search
builds it before any trial) and passed down; nothing else needs to know how the groups are named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from torch import nn

from pann.conversion.modules import ObservedMaxPool2d, ObservedReLU, PolyMaxPool2d, PolyReLU

GRANULARITIES = ("network", "stage", "layer")


def is_per_network(granularity: str) -> bool:
    """Whether ``granularity`` makes one group of the whole network (one alpha for every layer)."""
    return granularity == GRANULARITIES[0]

_LAYER_TYPES = (ObservedReLU, ObservedMaxPool2d, PolyReLU, PolyMaxPool2d)
_POOLS = (ObservedMaxPool2d, PolyMaxPool2d)


def _activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _LAYER_TYPES)}


def _stage_of(owner: str) -> str:
    parts = [p for p in owner.split(".") if p]
    if parts and parts[0] == "net":  # pann.models.builders.Classifier wraps the network as ``net``
        parts = parts[1:]
    return parts[0] if parts else "stem"


class LayerGroups(Mapping[str, list[str]]):
    """The activation layers of a model grouped at one ``granularity``: ``{group: [layer names]}``, groups and
    layers in execution order. ``per_network`` says the one group is the whole network (one alpha for all)."""

    def __init__(self, granularity: str, groups: Mapping[str, list[str]]):
        self.granularity = granularity
        self._groups = {name: list(layers) for name, layers in groups.items()}

    def __getitem__(self, group: str) -> list[str]:
        return self._groups[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"LayerGroups({self.granularity!r}, {self._groups!r})"

    @property
    def per_network(self) -> bool:
        return is_per_network(self.granularity)

    def uniform(self, value: float) -> dict[str, float]:
        """``value`` for every group."""
        return dict.fromkeys(self._groups, value)

    def expand(self, values: Mapping[str, float]) -> dict[str, float]:
        """Per-layer values from per-group ``values`` (see :func:`expand`)."""
        return expand(self._groups, values)


def layer_groups(model: nn.Module, granularity: str) -> LayerGroups:
    """The groups of ``model``'s activation layers (observers or polynomial layers) at ``granularity``.

    Raises ``ValueError`` for an unknown granularity, a model without activation layers, or a
    ``stage`` granularity on a model that has a single stage with no max-pool to cut it at.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
    layers = _activation_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no ReLU or max-pool layers (prepare or convert it first)")
    if is_per_network(granularity):
        return LayerGroups(granularity, {"network": list(layers)})
    if granularity == "layer":
        return LayerGroups(granularity, {name: [name] for name in layers})
    groups: dict[str, list[str]] = {}
    blocks: dict[str, int] = {}
    for name, module in layers.items():
        stage = _stage_of(getattr(module, "owner", ""))
        nested = "." in getattr(module, "owner", "").removeprefix("net.")
        key = stage if nested or stage == "stem" else f"block{blocks.get(stage, 0) + 1}"
        groups.setdefault(key, []).append(name)
        if isinstance(module, _POOLS) and not nested:
            blocks[stage] = blocks.get(stage, 0) + 1
    if len(groups) < 2:
        raise ValueError(f"granularity 'stage': {type(model).__name__} has no stages or max-pool blocks to "
                         "group its layers by; use 'network' or 'layer'")
    return LayerGroups(granularity, groups)


def check_names(given: Iterable[str], expected: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming every expected name missing from ``given`` and every unknown one."""
    given, expected = list(given), list(expected)
    missing = [n for n in expected if n not in given]
    unknown = [n for n in given if n not in expected]
    if missing or unknown:
        raise ValueError(f"{what} do not fit the model: "
                         + "; ".join(filter(None, [missing and "missing " + ", ".join(missing),
                                                   unknown and "unknown " + ", ".join(unknown)]))
                         + f" (expected: {', '.join(expected)})")


def alphas_by_layer(model: nn.Module, alphas: Mapping[str, float], default: float) -> dict[str, float]:
    """Every activation layer's alpha from ``alphas`` keyed by the groups of one granularity: stage names
    (``{"stem": 6, "layer3": 5}``) or layer names; layers whose group is not named get ``default``.

    Raises ``ValueError`` naming the keys that are neither stages nor activation layers of ``model``
    (or, when every key is one of them, saying that stages and layers are mixed).
    """
    layers = list(_activation_layers(model))
    try:
        stages = layer_groups(model, "stage")
    except ValueError:
        stages = {}
    for groups in (stages, {name: [name] for name in layers}):
        if groups and set(alphas) <= set(groups):
            return {layer: float(alphas.get(group, default)) for group, members in groups.items()
                    for layer in members}
    unknown = [k for k in alphas if k not in stages and k not in layers]
    what = f"{', '.join(unknown)}: neither stages nor activation layers" if unknown else \
        f"{', '.join(alphas)}: stages and layers mixed (name groups of one granularity)"
    raise ValueError(f"{what} of {type(model).__name__} (stages: {', '.join(stages) or 'none'}; "
                     f"layers: {', '.join(layers)})")


def expand(groups: Mapping[str, list[str]], values: Mapping[str, float]) -> dict[str, float]:
    """Per-layer values from per-group ``values`` (every group needs one; unknown groups are refused)."""
    check_names(values, groups, "per-group values")
    return {layer: values[group] for group, layers in groups.items() for layer in layers}
