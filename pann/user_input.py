"""User input written as text: lists of target precisions (alphas) and degree sets.

Shared by the ``pann`` command, the search and the scripts; bad text raises :class:`UsageError`
(a ``ValueError``) with a one-line message naming what is wrong.
"""

from __future__ import annotations

from pann.approximation.catalog import check_alpha


class UsageError(ValueError):
    """Bad command-line input."""


class ProblemsError(ValueError):
    """Bad input (a config, a spec) with every problem found listed in ``problems``, so that a user
    fixes them all in one go; the message is ``heading`` followed by the problems."""

    separator = "; "

    def __init__(self, problems: list[str], heading: str):
        self.problems = problems
        super().__init__(heading + self.separator.join(problems))


def parse_alphas(text: str) -> list[float]:
    """``'4-14'``, ``'4,6,8'`` or ``'9'`` -> alphas, each checked against the supported range."""
    alphas: list[float] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            if sep:
                first, last = int(lo), int(hi)
                if first > last:
                    raise UsageError(f"empty alpha range {part!r}")
                alphas += [float(a) for a in range(first, last + 1)]
            else:
                alphas.append(float(lo))
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot read alphas {text!r}; expected e.g. 4-14, 4,6,8 or 9") from exc
    return [check_alpha(a) for a in alphas]


def parse_degrees(text: str) -> tuple[int, ...]:
    """``'15,15'`` -> ``(15, 15)``; the degrees themselves are checked by the approximation."""
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError as exc:
        raise UsageError(f"cannot read degrees {text!r}; expected odd integers like 15,15") from exc
