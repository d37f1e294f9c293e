"""A picture of a search's answer: each activation layer's alpha, and the levels left along the network with
the bootstraps, beside a reference answer (the uniform one a per-layer answer has to beat).

A per-layer answer is easier to judge drawn than listed: where precision was spent, and how the levels it
saves move the bootstraps. Plain data in (alphas by layer, :func:`pann.cost.network.level_trace` steps), a PNG out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from pann.cost.network import LevelStep
from pann.files import write_bytes_atomic

__all__ = ["Drawn", "answer_picture"]

Drawn = tuple[str, Mapping[str, float], Sequence[LevelStep], int, int]
"""One network to draw: (label, alpha by activation layer, level trace, bootstraps, polynomial levels)."""


def answer_picture(path: str | Path, networks: Sequence[Drawn], title: str) -> Path:
    """Write ``path`` (PNG): on top, each activation layer's alpha for every network; below, the levels left
    along each network's deepest path, a marker where a bootstrap refreshes it. The first network is the
    answer; the legend gives each network's bootstraps and polynomial levels."""
    from matplotlib.figure import Figure  # no pyplot: no display and no global backend needed

    if not networks:
        raise ValueError("answer_picture: nothing to draw")
    fig = Figure(figsize=(10, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    layers = list(networks[0][1])
    width = 0.8 / len(networks)
    colours = ("tab:red", "tab:blue", "tab:green", "tab:orange")
    highest = max(max(alphas.values()) for _, alphas, *_ in networks)
    for i, (label, alphas, trace, bootstraps, poly_levels) in enumerate(networks):
        colour = colours[i % len(colours)]
        legend = f"{label}: {bootstraps} bootstraps, {poly_levels} polynomial levels"
        top.bar([k + (i - (len(networks) - 1) / 2) * width for k in range(len(layers))],
                [alphas[layer] for layer in layers], width, color=colour, label=legend)
        x = _positions(trace, layers)
        on_top = 2 * (len(networks) - i)  # the answer drawn over its reference
        bottom.step(x, [s.levels_left for s in trace], where="post", color=colour, label=legend, zorder=on_top)
        boots = [k for k, s in enumerate(trace) if s.bootstrapped]
        bottom.scatter([x[k] for k in boots], [trace[k].levels_left for k in boots], marker="^", s=40, color=colour,
                       zorder=on_top + 1)
    top.set(ylabel="alpha (bits)", title=title, ylim=(0, highest * 1.45))
    top.legend(loc="upper left", fontsize=8)
    bottom.set_xticks(range(len(layers)), [_short(layer) for layer in layers], rotation=60, fontsize=7)
    bottom.set(xlabel="activation layers, in order (the linear layers before each sit half a step to its left)",
               ylabel="levels left", title="levels left along the deepest path; ▲ the first operation after a bootstrap")
    bottom.legend(loc="lower left", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def _positions(trace: Sequence[LevelStep], layers: list[str]) -> list[float]:
    """Where each step of ``trace`` sits on the activation-layer axis: the steps of activation layer ``k`` spread
    over ``[k - 0.4, k + 0.4]``, the other operations at ``k - 0.5`` for the next activation layer ``k``."""
    index = {layer: k for k, layer in enumerate(layers)}
    owner = [index.get(step.label.split(" ")[0]) if step.activation else None for step in trace]
    positions, following = [0.0] * len(trace), float(len(layers))
    for k in reversed(range(len(trace))):  # the next activation layer of each non-activation step
        if owner[k] is not None:
            following = owner[k]
        else:
            positions[k] = following - 0.5
    for layer in set(o for o in owner if o is not None):
        steps = [k for k, o in enumerate(owner) if o == layer]
        for j, k in enumerate(steps):
            positions[k] = layer - 0.4 + 0.8 * j / max(len(steps) - 1, 1)
    return positions


def _short(layer: str) -> str:
    """``net_layer2_0_relu_7`` -> ``layer2.0 relu7``; other names as they are."""
    parts = layer.removeprefix("net_").split("_")
    if len(parts) == 4 and parts[2] == "relu":
        return f"{parts[0]}.{parts[1]} relu{parts[3]}"
    return layer.removeprefix("net_")
