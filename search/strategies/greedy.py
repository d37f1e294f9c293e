"""``search.strategy: greedy``: the deterministic per-layer baseline, lowering one group's alpha at a time, round
robin over the groups, while the target holds."""

from __future__ import annotations

from search.strategies.base import WalkStrategy
from search.strategies.walk import FINISHED, Walk

__all__ = ["GreedyStrategy", "GreedyWalk"]


class GreedyWalk(Walk):
    """The deterministic per-layer baseline: lower one group's alpha at a time while the constraint holds.

    The walk, as with one trial at a time: first the uniform alphas, from the highest down, until one misses the
    target; the lowest feasible one before the miss is the starting point. Then, round robin over the groups, the
    current point with one group's alpha lowered one rung of ``alphas`` (one bit for a range, the next lower value
    of a ladder): a feasible result becomes the current point, an infeasible one retires that group. It finishes
    when every group is retired or at its lowest alpha. ``fixed`` holds the other dimensions.

    With several trials at a time the later proposals are speculative: each is what the walk would propose next if
    every proposal still running missed the target. Results are applied in the order they were proposed, whatever
    order they finish in, and a proposal made from a point that has since changed is dropped and made again from
    the new one. So the walk, and its answer, do not depend on which trial finishes first (accuracy near the
    target's edge makes any other order a different walk); only the number of dropped trials does.
    """

    def __init__(self, groups: list[str], alphas: list[float], keys: dict[str, str], target_accuracy: float,
                 fixed: dict | None = None):
        super().__init__(groups, alphas, keys, target_accuracy, fixed)
        self.uniform = sorted(alphas, reverse=True)  # not yet proposed
        self.uniform_feasible: list[float] = []
        self.uniform_failed = False
        self.current: dict[str, float] | None = None
        self.retired: set[str] = set()
        self.turn = 0  # the group the walk tries next, from the applied results
        # Proposals in the order they were made: [trial id, group (None: a uniform point), alphas, feasible or None].
        self.queue: list[list] = []

    def _lower(self, alpha: float) -> float:
        """The rung below ``alpha``."""
        return self.ladder[self.ladder.index(alpha) - 1]

    def _propose(self, trial_id: str, group: str | None, alphas: dict[str, float]) -> dict:
        self.queue.append([trial_id, group, alphas, None])
        return self._config(alphas)

    def _next_group(self) -> str | None:
        """The group the walk would try next if every proposal still running from the current point missed."""
        running = [group for _, group, alphas, _ in self.queue
                   if group is not None and self._base(group, alphas) == self.current]
        turn = self.turn if not running else (self.groups.index(running[-1]) + 1) % len(self.groups)
        for offset in range(len(self.groups)):
            group = self.groups[(turn + offset) % len(self.groups)]
            if group not in self.retired and group not in running and self.current[group] > self.ladder[0]:
                return group
        return None

    def _base(self, group: str, alphas: dict[str, float]) -> dict[str, float]:
        """The point a step proposal was made from: its alphas with ``group`` one rung up again."""
        return {**alphas, group: self.ladder[self.ladder.index(alphas[group]) + 1]}

    def suggest(self, trial_id: str) -> dict | None:
        if self.current is None:
            if self.uniform and not self.uniform_failed:
                return self._propose(trial_id, None, dict.fromkeys(self.groups, self.uniform.pop(0)))
            if any(result is None for *_, result in self.queue):
                return None  # wait for the uniform results
            return FINISHED  # no uniform alpha meets the target: nothing to lower
        group = self._next_group()
        if group is not None:
            return self._propose(trial_id, group, {**self.current, group: self._lower(self.current[group])})
        return FINISHED if not self.queue else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        for proposal in self.queue:
            if proposal[0] == trial_id:
                proposal[3] = bool(not error and result and result.get("final")
                                   and result["accuracy"] >= self.target)
        while self.queue and self.queue[0][3] is not None:
            self._apply(*self.queue.pop(0)[1:])

    def _apply(self, group: str | None, alphas: dict[str, float], feasible: bool) -> None:
        """One result, in proposal order."""
        if group is None:  # a uniform point
            if self.uniform_failed:
                return  # proposed past the first miss
            if feasible:
                self.uniform_feasible.append(alphas[self.groups[0]])
            else:
                self.uniform_failed = True
            decided = self.uniform_failed or not (self.uniform or any(g is None for _, g, *_ in self.queue))
            if decided and self.uniform_feasible:
                self.current = dict.fromkeys(self.groups, min(self.uniform_feasible))
        elif self._base(group, alphas) == self.current:  # else made from a point that has since changed
            if feasible:
                self.current = alphas
            else:
                self.retired.add(group)
            self.turn = (self.groups.index(group) + 1) % len(self.groups)


class GreedyStrategy(WalkStrategy):
    name = "greedy"

    def walk(self) -> GreedyWalk:
        return GreedyWalk(list(self.groups), self.ladder(), self.keys(), self.search.validation_target,
                          self.fixed())
