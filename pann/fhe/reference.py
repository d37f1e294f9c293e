"""The plaintext side of the encrypted check: the PANN's float64 logits, the values the
encrypted network starts from, and the per-image comparison."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import fx

from pann.conversion.modules import PolyReLU


@dataclass(frozen=True)
class ImageResult:
    """One image: encrypted vs plaintext-PANN argmax, the largest logit error, the network's
    multiplicative depth (levels), the ciphertext bootstraps it took, and the wall time."""

    index: int
    encrypted_class: int
    plaintext_class: int
    max_logit_error: float
    levels: int
    bootstraps: int
    seconds: float
    trace: tuple = ()  # with --trace: one dict per layer (layer, level, bootstraps, max_abs, max_error)
    layers: tuple = ()  # one dict per layer: layer, kind, level (of its output), seconds (its own), bootstraps and
    #                     bootstrap_seconds (those it ended with); see :func:`seconds_by_kind`

    @property
    def agrees(self) -> bool:
        return self.encrypted_class == self.plaintext_class

    def to_dict(self) -> dict:
        return {**asdict(self), "agrees": self.agrees}


class _Capture(fx.Interpreter):
    """Runs a PANN and keeps the value of one node (the encrypted network's input)."""

    def __init__(self, module: fx.GraphModule, name: str):
        super().__init__(module)
        self.name, self.value = name, None

    def run_node(self, node):
        result = super().run_node(node)
        if node.name == self.name:
            self.value = result
        return result


def plaintext(pann: fx.GraphModule, images: torch.Tensor, boundary: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, encrypted-network inputs)`` of the PANN in float64, evaluated eagerly."""
    reference = copy.deepcopy(pann).double().eval()
    for module in reference.modules():
        if isinstance(module, PolyReLU):
            module.dtype, module.compiled = torch.float64, False
    capture = _Capture(reference, boundary)
    with torch.no_grad():
        logits = capture.run(images.double())
    inputs = images.double() if boundary == "input" or capture.value is None else capture.value
    return logits, inputs


def compare(index: int, encrypted: torch.Tensor, reference: torch.Tensor, levels: int, bootstraps: int,
            seconds: float, trace: tuple = (), layers: tuple = ()) -> ImageResult:
    """The :class:`ImageResult` of decrypted logits ``encrypted`` against the plaintext ``reference``."""
    encrypted = encrypted.double().flatten()[:reference.numel()]
    return ImageResult(index, int(encrypted.argmax()), int(reference.argmax()),
                       float((encrypted - reference).abs().max()), levels, bootstraps, seconds, trace, layers)


def first_off(trace: tuple, relative: float = 0.01) -> dict | None:
    """The first layer of a trace whose largest error exceeds ``relative`` times its largest value (``None`` if
    none does; layers not compared, ``max_error`` None, are passed over): where an encrypted run that disagrees
    went wrong."""
    return next((t for t in trace if t["max_error"] is not None
                 and t["max_error"] > relative * max(t["max_abs"], 1e-12)), None)


def seconds_by_kind(layers: tuple | list) -> dict[str, float]:
    """Where one image's time went, from its :attr:`ImageResult.layers` rows: ``bootstrap`` (every bootstrap), then
    each layer kind's own seconds (``conv2d``, ``relu``, ``add``, ...), largest first."""
    spent: dict[str, float] = {"bootstrap": sum(row["bootstrap_seconds"] for row in layers)}
    for row in layers:
        spent[row["kind"]] = spent.get(row["kind"], 0.0) + row["seconds"]
    return dict(sorted(spent.items(), key=lambda item: -item[1]))
