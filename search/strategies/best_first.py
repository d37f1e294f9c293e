"""``search.strategy: best-first``: the per-layer walk that spends the accuracy where it buys the most, lowering
the group whose one-rung step loses the least validation loss (lazy best-first descent)."""

from __future__ import annotations

import math

from search.strategies.base import WalkStrategy
from search.strategies.walk import FINISHED, Walk

__all__ = ["BestFirstStrategy", "BestFirstWalk"]


class BestFirstWalk(Walk):
    """A per-layer walk that spends the accuracy where it buys the most: at every step it lowers the group whose
    one-rung step loses the least, measured by the validation loss (lazy best-first descent).

    The walk, as with one trial at a time: the uniform alphas from the highest down until one misses the target;
    the lowest feasible one before the miss is the starting point (as :class:`~search.strategies.greedy.GreedyWalk`). Every group's
    step (its alpha one rung lower) is measured from there. Then, repeatedly, the group whose step has the lowest
    measured loss is considered: measured from an earlier point, its step is measured again from the current one;
    measured from the current point, the step is taken when it meets the target and the group retired when it
    misses. Lowering other groups only makes a step's loss grow, so a measurement from an earlier point is an
    optimistic estimate and only the best one needs measuring again (the lazy evaluation of greedy descent). It
    finishes when every group is retired or at its lowest rung.

    The loss (mean cross-entropy on the validation images, the trial's ``loss``) ranks the steps: it moves with
    the approximations' error smoothly where the accuracy moves by whole images. The accuracy decides whether a
    step is taken.

    With ``concurrency`` trials at a time, proposal ``n`` is made from the results of the proposals before
    ``n - concurrency`` replayed in order (it waits for them, and for more when those do not decide the next
    point), never from whichever later trials happen to have finished: the walk and its answer do not depend on
    the order trials finish in.
    """

    _WAIT = object()

    def __init__(self, groups: list[str], alphas: list[float], keys: dict[str, str], target_accuracy: float,
                 fixed: dict | None = None, concurrency: int = 1):
        super().__init__(groups, alphas, keys, target_accuracy, fixed)
        self.concurrency = max(1, int(concurrency))
        self.proposals: list[tuple[str, str | None, dict[str, float]]] = []  # (trial id, group or None, alphas)
        self.results: dict[str, tuple[bool, float]] = {}  # trial id -> (meets the target, loss)

    def suggest(self, trial_id: str) -> dict | None:
        n = len(self.proposals)
        for m in range(max(0, n - self.concurrency), n + 1):
            if any(t not in self.results for t, *_ in self.proposals[:m]):
                return None  # the walk needs a result that has not come yet
            action = _Replay(self).replay(self.proposals[:m]).next(self.proposals[m:])
            if action is FINISHED:
                return action
            if action is not self._WAIT:
                group, alphas = action
                self.proposals.append((trial_id, group, alphas))
                return self._config(alphas)
        return None

    @property
    def current(self) -> dict[str, float] | None:
        """The walk's point after the results in hand, in proposal order (up to the first one still running)."""
        known = next((i for i, (t, *_) in enumerate(self.proposals) if t not in self.results), len(self.proposals))
        return _Replay(self).replay(self.proposals[:known]).current

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if any(t == trial_id for t, *_ in self.proposals):
            ok = bool(not error and result and result.get("final"))
            self.results[trial_id] = (ok and result["accuracy"] >= self.target,
                                      float(result.get("loss", math.inf)) if ok else math.inf)


class _Replay:
    """The state of a :class:`BestFirstWalk` walk after some of its results, replayed in proposal order."""

    def __init__(self, search: BestFirstWalk):
        self.search, self.groups, self.ladder = search, search.groups, search.ladder
        self.uniform_feasible: list[float] = []
        self.uniform_missed = False
        self.current: dict[str, float] | None = None
        self.retired: set[str] = set()
        self.estimates: dict[str, tuple[float, dict[str, float]]] = {}  # group -> (loss of its step, measured from)

    def _step(self, group: str) -> dict[str, float] | None:
        """The current point with ``group`` one rung lower (None at the lowest rung)."""
        rung = self.ladder.index(self.current[group])
        return {**self.current, group: self.ladder[rung - 1]} if rung else None

    def replay(self, proposals) -> _Replay:
        for trial_id, group, alphas in proposals:
            meets, loss = self.search.results[trial_id]
            if group is None:
                self._uniform(alphas[self.groups[0]], meets)
            elif self.current is not None and group not in self.retired and alphas == self._step(group):
                if meets:
                    self.estimates[group] = (loss, self.current)
                else:  # it misses from here, so from every lower point too: the group is done
                    self.retired.add(group)
                    self.estimates.pop(group, None)
            # else: the step of a rung the group has left, measured speculatively; nothing to learn
            self._decide()
        return self

    def _uniform(self, alpha: float, meets: bool) -> None:
        if self.current is not None or self.uniform_missed:
            return  # proposed speculatively past the start
        if meets:
            self.uniform_feasible.append(alpha)
        else:
            self.uniform_missed = True
        if self.uniform_feasible and (self.uniform_missed or len(self.uniform_feasible) == len(self.ladder)):
            self.current = dict.fromkeys(self.groups, min(self.uniform_feasible))

    def _ranked(self) -> list[str]:
        """The groups that can still step down, the most promising step first: unmeasured ones (in group order),
        then by measured loss."""
        eligible = [g for g in self.groups if g not in self.retired and self.current[g] > self.ladder[0]]
        return sorted(eligible, key=lambda g: (g in self.estimates, self.estimates.get(g, (0.0,))[0]))

    def _decide(self) -> None:
        """Take the best step while it was measured from the current point."""
        while self.current is not None and (ranked := self._ranked()):
            group = ranked[0]
            if group not in self.estimates or self.estimates[group][1] != self.current:
                return  # to be measured (again) from here
            del self.estimates[group]
            self.current = self._step(group)

    def next(self, pending):
        """The next proposal ``(group or None, alphas)`` given the proposals still pending, ``_WAIT`` or
        ``FINISHED``."""
        if self.current is None:
            if self.uniform_missed:
                return FINISHED  # even the highest uniform alpha misses the target
            proposed = set(self.uniform_feasible) | {alphas[self.groups[0]] for _, g, alphas in pending if g is None}
            left = [a for a in sorted(self.ladder, reverse=True) if a not in proposed]
            return (None, dict.fromkeys(self.groups, left[0])) if left else BestFirstWalk._WAIT
        ranked = self._ranked()
        measuring = {g for _, g, alphas in pending if g in ranked and alphas == self._step(g)}
        for group in ranked:
            if group not in measuring:
                return group, self._step(group)
        return BestFirstWalk._WAIT if pending else FINISHED


class BestFirstStrategy(WalkStrategy):
    name = "best-first"

    def walk(self) -> BestFirstWalk:
        return BestFirstWalk(list(self.groups), self.ladder(), self.keys(), self.search.validation_target,
                             self.fixed(), self.search.concurrency)
