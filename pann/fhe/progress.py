"""Where an encrypted check stands, as plain data for a progress display (the check itself only reports).

Compiling has Orion's five phases (ranges, polynomials, diagonals, bootstrap placement, layers), read from
the lines Orion prints; running has one step per layer of each image. Nothing here imports the FHE library.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

COMPILE_PHASES = 5  # Orion 1.0.2's "{1} ... {5}" compile phases
_PHASE = re.compile(r"^\{(\d)\}\s*(.*?)[.\s]*$")
_LAYER = re.compile(r"^(?:Packing (\S+?):|\W*(\S+) @ level=(\d+))")
_PLACED = re.compile(r"Network requires (\d+) bootstrap operations")


@dataclass(frozen=True)
class Progress:
    """``stage`` "compile" (``step`` = Orion's phase of :data:`COMPILE_PHASES`) or "image" (image ``image`` of
    ``images``, and the ``batch - 1`` after it that run beside it, layer by layer; ``step`` = layers done of
    ``steps``); ``detail``: the phase or layer; ``bootstraps`` of this image so far; seconds since the check began,
    and an estimate of those left once an image has finished."""

    stage: str
    step: int
    steps: int
    detail: str
    elapsed_s: float
    image: int = 0
    images: int = 0
    bootstraps: int = 0
    left_s: float | None = None
    batch: int = 1

    def line(self) -> str:
        if self.stage == "compile":
            return f"compiling {self.step}/{self.steps}: {self.detail} [{_duration(self.elapsed_s)}]"
        left = "" if self.left_s is None else f", about {_duration(self.left_s)} left"
        plural = "" if self.bootstraps == 1 else "s"
        which = f"image {self.image}" if self.batch == 1 else f"images {self.image}-{self.image + self.batch - 1}"
        return (f"{which}/{self.images}: layer {self.step}/{self.steps} {self.detail}, "
                f"{self.bootstraps} bootstrap{plural} [{_duration(self.elapsed_s)}{left}]")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class CompileLines:
    """Turns the lines Orion prints while compiling into :class:`Progress` (phase, and the layer being packed
    or compiled) for ``report``; ``clock()`` gives the seconds since the check began."""

    def __init__(self, report: Callable[[Progress], None], clock: Callable[[], float]):
        self.report, self.clock = report, clock
        self.phase, self.title = 0, ""

    def __call__(self, line: str) -> None:
        phase = _PHASE.match(line.strip())
        if phase:
            self.phase, self.title = int(phase.group(1)), phase.group(2)
            self.report(Progress("compile", self.phase, COMPILE_PHASES, self.title, self.clock()))
            return
        placed = _PLACED.search(line)
        if placed:  # logged when Orion decides, so that a compilation that fails later still tells
            logger.info("Orion's bootstrap placement: %s bootstraps per image", placed.group(1))
        layer = _LAYER.match(line.strip())
        if layer and self.phase:
            name = layer.group(1) or layer.group(2)
            self.report(Progress("compile", self.phase, COMPILE_PHASES, f"{self.title}: {name}", self.clock()))


def images_left(done_seconds: list[float], images: int, fraction_of_current: float, current: int = 1) -> float | None:
    """Seconds left for ``images`` images, ``current`` of them running (``fraction_of_current`` done), from the mean
    of those done (None before the first is done)."""
    if not done_seconds:
        return None
    mean = sum(done_seconds) / len(done_seconds)
    return mean * (images - len(done_seconds) - current * fraction_of_current)
