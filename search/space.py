"""The search space: a config's dimensions as Ray Tune domains, with one alpha per layer group.

At granularity ``network`` the space has one ``alpha``; at ``stage`` or ``layer`` it has one dimension
``alpha.<group>`` per group of the search's :class:`pann.conversion.groups.LayerGroups` (:func:`dimension`), each
over the config's alpha range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import tune

from pann.approximation.catalog import MAX_ALPHA, MIN_ALPHA
from pann.conversion.groups import LayerGroups

_PREFIX = "alpha."
INTEGER_DIMENSIONS = ("alpha", "epochs")  # ranges of these are integer ranges


def alpha_key(group: str) -> str:
    """The dimension of ``group``'s alpha in a per-layer space."""
    return _PREFIX + group


def dimension(groups: LayerGroups, group: str) -> str:
    """The dimension that holds ``group``'s alpha: ``alpha`` when one group is the whole network, else
    :func:`alpha_key`."""
    return "alpha" if groups.per_network else alpha_key(group)


def _domain(name: str, spec: Any):
    """A list is a choice (one value: a constant), a mapping a range, anything else a constant."""
    if isinstance(spec, list):
        return spec[0] if len(spec) == 1 else tune.choice(spec)
    if isinstance(spec, Mapping):
        if name in INTEGER_DIMENSIONS:
            return (tune.lograndint if spec.get("log") else tune.randint)(spec["low"], spec["high"] + 1)
        return (tune.loguniform if spec.get("log") else tune.uniform)(spec["low"], spec["high"])
    return spec


def param_space(space: Mapping[str, Any], groups: LayerGroups | None = None) -> dict[str, Any]:
    """Tune domains for ``space``; with per-layer ``groups``, ``alpha`` becomes one dimension per group."""
    domains = {name: _domain(name, spec) for name, spec in space.items()}
    if groups is not None and not groups.per_network:
        del domains["alpha"]
        domains.update({alpha_key(g): _domain("alpha", space["alpha"]) for g in groups})
    return domains


def alpha_values(space: Mapping[str, Any]) -> list[float]:
    """The alphas the space can sample, in increasing order: every whole bit of a range, or a list's values
    (a list may hold fractional alphas at granularity stage or layer, a ladder of rungs such as 5.625 for the
    depth-5 composite that whole bits skip)."""
    spec = space["alpha"]
    values = spec if isinstance(spec, list) else range(spec["low"], spec["high"] + 1) \
        if isinstance(spec, Mapping) else [spec]
    return sorted({int(v) if float(v).is_integer() else float(v) for v in values})


def neighbourhood(alpha: float, neighbours: int) -> list[float]:
    """``alpha`` and up to ``neighbours`` alphas on each side, within the supported range."""
    return [a for a in (alpha + d for d in range(-neighbours, neighbours + 1)) if MIN_ALPHA <= a <= MAX_ALPHA]


def measurable_alphas(space: Mapping[str, Any], neighbours: int) -> list[float]:
    """Every alpha a trial of this space can measure (sampled ones and their neighbours)."""
    return sorted({a for value in alpha_values(space) for a in neighbourhood(value, neighbours)})


def group_alphas(point: Mapping[str, Any], groups: LayerGroups) -> dict[str, float]:
    """The alpha of each group in a sampled point."""
    return {g: float(point[dimension(groups, g)]) for g in groups}


def uniform_points(space: Mapping[str, Any], groups: LayerGroups) -> list[dict[str, Any]]:
    """One point per alpha with that alpha in every group: the uniform answers a per-layer search must beat
    (the study is warm-started with them; the other dimensions are left to the sampler). Empty at granularity
    ``network``, where they are the space."""
    if groups.per_network:
        return []
    return [{alpha_key(g): a for g in groups} for a in reversed(alpha_values(space))]


def max_epochs(space: Mapping[str, Any]) -> int:
    spec = space.get("epochs", 0)
    return max(spec) if isinstance(spec, list) else spec["high"] if isinstance(spec, Mapping) else spec


def constants(space: Mapping[str, Any]) -> dict[str, Any]:
    """The dimensions with a single value, as plain values."""
    return {name: spec[0] if isinstance(spec, list) else spec for name, spec in space.items()
            if not isinstance(spec, Mapping) and not (isinstance(spec, list) and len(spec) > 1)}
