"""The fewest bootstraps for a series-parallel graph of levelled operations, placed exactly.

A network is described as nested :class:`Series` and :class:`Parallel` blocks of
:class:`Op` (consumes ``levels``) and :class:`Boot` (a place where a bootstrap may
sit). A :class:`Parallel` block is a fork-join: every branch starts from the same
ciphertext and the branches rejoin in one operation (a residual add, the final
``x (1 + p) / 2`` of a ReLU) that takes them at their lowest level.

:func:`place_bootstraps` solves the placement by dynamic programming over levels
(min-plus algebra, as a shortest path over a level graph). A block is summarised by
its transfer matrix ``T[s, l]``: the fewest bootstraps inside it that carry a
ciphertext entering at level ``s`` to its end at a level ``>= l``; lowering a level is
free (modulus switching), so ``T`` is non-decreasing in ``l``. Then

* ``Op`` of ``d`` levels: ``T[s, l] = 0`` if ``l <= s - d``, else infinite;
* ``Boot``: ``T[s, l] = 0`` if ``l <= s``, ``1`` if ``l <= L`` (``L`` the levels after a
  bootstrap), else infinite;
* ``Series``: ``T = T_1 (x) T_2 (x) ...`` with ``(A (x) B)[s, l] = min_m A[s, m] + B[m, l]``;
* ``Parallel``: ``T = T_1 + T_2 + ...`` (each branch must end at ``>= l`` for the join
  to be at ``>= l``; a bootstrap before the fork belongs to the enclosing series and
  is counted once, a bootstrap on a branch refreshes that branch only).

Guarantee: for a graph that *is* series-parallel (chains, nested fork-joins: VGGs,
ResNets, the inside of a composite ReLU), the count is the exact minimum over all
placements at the given :class:`Boot` sites; a bootstrap sites list achieving it is
recovered by backtracking. Cost: ``O(n^3)`` per block for ``n`` levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Op:
    """An operation consuming ``levels``; ``kind`` and ``multiplications`` feed the latency estimate,
    ``activation`` marks the levels of a polynomial activation."""

    label: str
    levels: int
    kind: str = "free"  # "linear", "scale", "polynomial" or "free"
    multiplications: int = 0
    activation: bool = False


@dataclass(frozen=True, eq=False)
class Boot:
    """A place where a bootstrap may sit; ``site`` says where, for the report."""

    site: str


@dataclass(frozen=True, eq=False)
class Series:
    items: tuple

    def __init__(self, items):
        object.__setattr__(self, "items", tuple(items))


@dataclass(frozen=True, eq=False)
class Parallel:
    branches: tuple[Series, ...]

    def __init__(self, branches):
        object.__setattr__(self, "branches", tuple(branches))


def operations(block) -> list[Op]:
    """Every :class:`Op` of a block, in order."""
    if isinstance(block, Op):
        return [block]
    children = block.items if isinstance(block, Series) else block.branches if isinstance(block, Parallel) else ()
    return [op for child in children for op in operations(child)]


def depth(block) -> int:
    """Levels along the deepest path: what the block needs without bootstrapping."""
    if isinstance(block, Op):
        return block.levels
    if isinstance(block, Series):
        return sum(depth(item) for item in block.items)
    if isinstance(block, Parallel):
        return max(depth(branch) for branch in block.branches)
    return 0


def place_bootstraps(root: Series, start_level: int, bootstrap_levels: int) -> list[str]:
    """The sites of a minimum set of bootstraps that evaluates ``root`` from a ciphertext
    at ``start_level``, each bootstrap giving ``bootstrap_levels`` levels.

    Raises ``ValueError`` naming an operation deeper than ``bootstrap_levels``.
    """
    for op in operations(root):
        if op.levels > bootstrap_levels:
            raise ValueError(f"{op.label} needs {op.levels} levels, more than the {bootstrap_levels} "
                             "available after a bootstrap")
    solver = _Solver(max(start_level, bootstrap_levels) + 1, bootstrap_levels)
    if not np.isfinite(solver.transfer(root)[start_level, 0]):
        raise ValueError("no bootstrap placement evaluates the graph")  # unreachable when every op fits
    return solver.backtrack(root, start_level, 0)


class _Solver:
    """Transfer matrices of the blocks (memoised by identity) and the backtracking through them."""

    def __init__(self, n: int, bootstrap_levels: int):
        s, l = np.arange(n)[:, None], np.arange(n)[None, :]
        self.identity = np.where(l <= s, 0.0, np.inf)
        self._reach = l <= bootstrap_levels  # the levels a bootstrap can give
        self.boot = np.where(l <= s, 0.0, np.where(self._reach, 1.0, np.inf))
        self._op = {d: np.where(l <= s - d, 0.0, np.inf) for d in range(n)}
        self._transfer: dict[int, np.ndarray] = {}
        self._prefixes: dict[int, list[np.ndarray]] = {}

    def transfer(self, block) -> np.ndarray:
        if isinstance(block, Op):
            return self._op[block.levels]
        if isinstance(block, Boot):
            return self.boot
        key = id(block)
        if key not in self._transfer:
            if isinstance(block, Parallel):
                self._transfer[key] = sum(self.transfer(b) for b in block.branches)
            else:
                prefixes = [self.identity]
                for item in block.items:
                    prefixes.append(self._then(prefixes[-1], item))
                self._prefixes[key] = prefixes
                self._transfer[key] = prefixes[-1]
        return self._transfer[key]

    def _then(self, prefix: np.ndarray, item) -> np.ndarray:
        """``prefix (x) T(item)``; shortcuts for the simple items, since rows of ``prefix`` are non-decreasing."""
        if isinstance(item, Op):
            shifted = np.full_like(prefix, np.inf)
            shifted[:, :prefix.shape[1] - item.levels] = prefix[:, item.levels:]
            return shifted
        if isinstance(item, Boot):
            return np.minimum(prefix, np.where(self._reach, prefix[:, :1] + 1.0, np.inf))
        return _min_plus(prefix, self.transfer(item))

    def backtrack(self, block, s: int, l: int) -> list[str]:
        """Bootstrap sites of an optimal path from level ``s`` into ``block`` to ``>= l`` out of it."""
        if isinstance(block, Boot):
            return [block.site] if l > s else []
        if isinstance(block, Parallel):
            return [site for branch in block.branches for site in self.backtrack(branch, s, l)]
        if isinstance(block, Op):
            return []
        self.transfer(block)
        prefixes = self._prefixes[id(block)]
        parts = []
        for i in range(len(block.items), 0, -1):
            totals = prefixes[i - 1][s, :] + self.transfer(block.items[i - 1])[:, l]
            m = int(np.flatnonzero(totals == prefixes[i][s, l])[-1])  # the highest level that is optimal
            parts.append(self.backtrack(block.items[i - 1], m, l))
            l = m
        return [site for part in reversed(parts) for site in part]


def _min_plus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[:, :, None] + b[None, :, :]).min(axis=1)
