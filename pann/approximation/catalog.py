"""Solved approximations, cached on disk, and the search for the cheapest one of a precision.

A degree set is solved once: its :class:`~pann.approximation.composite.ReluApproximation` is
written as JSON under :func:`cache_dir` and read back on later calls.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pann.approximation import polynomial_cost
from pann.files import write_bytes_atomic
from pann.approximation.composite import (MAX_DEGREE, ReluApproximation, composite_relu, direct_relu,
                                validate_degrees)

MIN_ALPHA, MAX_ALPHA = 2.0, 16.0
MAX_STAGES = 4
_CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """Where solved approximations live: ``$PANN_CACHE_DIR``, else ``~/.cache/pann``."""
    root = os.environ.get("PANN_CACHE_DIR") or Path.home() / ".cache" / "pann"
    return Path(root) / "approximations" / _CACHE_VERSION


def get_approximation(family: str, degrees: Sequence[int]) -> ReluApproximation:
    """The approximation of ``family`` with ``degrees``, solved once and cached on disk."""
    if family not in ("composite", "minimax", "least-squares"):
        raise ValueError(f"unknown approximation family {family!r}; "
                         "expected 'composite', 'minimax' or 'least-squares'")
    degrees = validate_degrees(degrees, odd=family == "composite")
    if family != "composite" and len(degrees) != 1:
        raise ValueError(f"a {family} approximation has one degree, got {list(degrees)}")
    return _cached(family, degrees)


def _cache_path(family: str, degrees: tuple[int, ...], folder: Path | None = None) -> Path:
    return (folder or cache_dir()) / f"{family}-{'-'.join(map(str, degrees))}.json"


def _is_cached(family: str, degrees: tuple[int, ...]) -> bool:
    return _cache_path(family, degrees).exists()


def _cached(family: str, degrees: tuple[int, ...]) -> ReluApproximation:
    """The approximation from memory, else from the cache folder of the moment, else solved and written there.
    Memory is keyed by the folder too, so changing ``$PANN_CACHE_DIR`` is never answered from another folder."""
    return _in_folder(cache_dir(), family, degrees)


@functools.lru_cache(maxsize=None)
def _in_folder(folder: Path, family: str, degrees: tuple[int, ...]) -> ReluApproximation:
    path = _cache_path(family, degrees, folder)
    if path.exists():
        try:
            return ReluApproximation.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt cache entry is solved again and overwritten
    approx = composite_relu(degrees) if family == "composite" else direct_relu(degrees[0], family)
    write_bytes_atomic(path, approx.to_json().encode())
    return approx


_cached.cache_clear = _in_folder.cache_clear  # what tests and long-lived processes reset


def check_alpha(alpha: float) -> float:
    """Validate a target precision in bits."""
    alpha = float(alpha)
    if not MIN_ALPHA <= alpha <= MAX_ALPHA:
        raise ValueError(f"alpha {alpha:g} outside the supported range {MIN_ALPHA:g}..{MAX_ALPHA:g}")
    return alpha


@functools.lru_cache(maxsize=None)
def _stage_degrees() -> tuple[int, ...]:
    """Odd degrees not dominated by a higher degree of the same depth and no more multiplications."""
    odd = range(3, MAX_DEGREE + 1, 2)
    return tuple(d for d in odd
                 if not any(polynomial_cost.polynomial_depth(h) == polynomial_cost.polynomial_depth(d)
                            and polynomial_cost.polynomial_multiplications(h)
                            <= polynomial_cost.polynomial_multiplications(d)
                            for h in odd if h > d))


def _degree_sets() -> Iterator[tuple[int, ...]]:
    """Non-decreasing degree sets of up to :data:`MAX_STAGES` stages."""
    degrees = _stage_degrees()
    for stages in range(1, MAX_STAGES + 1):
        yield from itertools.combinations_with_replacement(degrees, stages)


def _cost(degrees: tuple[int, ...]) -> tuple[int, int]:
    return polynomial_cost.sign_depth(degrees), polynomial_cost.sign_multiplications(degrees)


def _deepest_of_depth(degrees: tuple[int, ...]) -> tuple[int, ...]:
    """Each stage raised to the highest candidate degree of its depth (it dominates the set)."""
    top = {polynomial_cost.polynomial_depth(d): d for d in sorted(_stage_degrees())}
    return tuple(top[polynomial_cost.polynomial_depth(d)] for d in degrees)


def relu_for_precision(alpha: float, workers: int = 1) -> ReluApproximation:
    """The cheapest composite ReLU approximation whose precision is at least ``alpha`` bits.

    Cheapest means least depth, then fewest non-scalar multiplications. Degree sets are
    searched, not looked up: every non-decreasing set of up to four stages whose stage
    degrees are not dominated (same depth, no more multiplications, higher degree).
    A depth is skipped when even its highest-degree sets miss ``alpha``, since raising
    a stage's degree at equal depth does not lower the precision. Sets not yet cached
    are solved in ``workers`` processes (default 1: a library call never takes every CPU of a machine, a Ray
    trial's least of all; the CLI and the search driver pass the CPUs they own).
    """
    alpha = check_alpha(alpha)
    workers = max(1, workers)
    by_depth: dict[int, list[tuple[int, ...]]] = {}
    for degrees in sorted(_degree_sets(), key=lambda ds: (_cost(ds), ds)):
        by_depth.setdefault(_cost(degrees)[0], []).append(degrees)
    with _Solver(workers) as solve:
        for depth in sorted(by_depth):
            candidates = by_depth[depth]
            tops = sorted({_deepest_of_depth(ds) for ds in candidates})
            if max(a.precision for a in solve(tops)) < alpha:
                continue
            for start in range(0, len(candidates), workers):
                for approx in solve(candidates[start:start + workers]):
                    if approx.precision >= alpha:
                        return approx
    raise ValueError(f"no degree set of up to {MAX_STAGES} stages reaches alpha {alpha:g}")


def _solve_composite(degrees: tuple[int, ...]) -> None:
    _cached("composite", degrees)


class _Solver:
    """Solves composite degree sets, in a process pool opened only when there is work."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __call__(self, degree_sets: Sequence[tuple[int, ...]]) -> list[ReluApproximation]:
        missing = [ds for ds in degree_sets if not _is_cached("composite", ds)]
        if len(missing) > 1 and self.workers > 1:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.workers)
            list(self.pool.map(_solve_composite, missing))
        return [get_approximation("composite", ds) for ds in degree_sets]
