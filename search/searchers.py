"""Searchers: Optuna's multi-objective sampler with the accuracy constraint, and two deterministic per-layer
walks, the greedy baseline (round robin) and best-first (the cheapest step by validation loss).

All are Ray Tune searchers (``suggest`` / ``on_trial_complete``); a trial's ``final`` result carries its
``accuracy``, its ``loss`` and its costs. The target accuracy is a constraint, never an objective.
"""

from __future__ import annotations

import math
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch


class FeasibleOnlyOptunaSearch(OptunaSearch):
    """OptunaSearch that records the accuracy constraint and tells Optuna about unfinished trials.

    Tune hands a trial stopped early (by ASHA or a time budget) to ``on_trial_complete`` with its last
    intermediate result; the stock searcher would tell Optuna it is COMPLETE with half-trained values.
    Only a result marked ``final`` counts; anything else is PRUNED (or FAIL on error).
    Relies on ``OptunaSearch``'s private ``_ot_trials``, ``_ot_study``, ``_space`` and ``_completed_trials``
    (tests/test_dependency_contracts.py checks them for the pinned Ray), and on Optuna's ``Study._storage`` and
    ``Trial._suggest``.
    """

    def __init__(self, *args, target_accuracy: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_accuracy = target_accuracy

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's next point, with its trial number as ``optuna_trial``.

        After a driver crash, the study can hold a trial that was asked for but never reached Tune's
        checkpoint; it is RUNNING and owned by no one. It is adopted here instead of asking a new one,
        so a resumed search has no extra trials. A driver killed inside ``Study.ask`` leaves the trial
        without some of its parameters (ask creates the trial, then suggests them one by one): the adopted
        trial is given the missing ones the way ask gives them, so the point it returns is complete.
        """
        if trial_id not in self._ot_trials and self._ot_study is not None:
            owned = {t._trial_id for t in self._ot_trials.values()}
            orphans = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t._trial_id not in owned]
            if orphans:
                adopted = optuna.trial.Trial(self._ot_study, orphans[0]._trial_id)
                for name, distribution in self._space.items():
                    if name not in orphans[0].params:
                        adopted._suggest(name, distribution)  # what Study.ask(fixed_distributions) does
                self._ot_trials[trial_id] = adopted
        point = super().suggest(trial_id)
        return None if point is None else {**point, "optuna_trial": self._ot_trials[trial_id].number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._ot_study is not None and \
                self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # A resume ran again a trial that had finished after Tune's last checkpoint: Optuna has its
            # result already (telling it again would raise), and MLflow keeps its first record.
            self._completed_trials.add(trial_id)
            return
        if not (result and result.get("final")) or error:
            result = None
        elif trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._ot_trials[trial_id].set_constraint("accuracy", self.target_accuracy - result["accuracy"])
        super().on_trial_complete(trial_id, result, error)


class _Walk(Searcher):
    """A per-group walk down a ladder of alphas (``alphas``, lowest first once sorted), proposing configs with
    ``keys[group]`` set to the group's alpha and ``fixed`` holding the other dimensions. Its whole state is plain
    data: saved and restored with the Tuner (``--resume``)."""

    def __init__(self, groups: list[str], alphas: list[float], keys: dict[str, str], target_accuracy: float,
                 fixed: dict | None = None):
        super().__init__(metric="accuracy", mode="max")
        self.groups, self.keys, self.target = list(groups), keys, target_accuracy
        self.ladder = sorted(alphas)
        self.fixed = dict(fixed or {})

    def _config(self, alphas: dict[str, float]) -> dict:
        return {**self.fixed, **{self.keys[g]: a for g, a in alphas.items()}}

    def save(self, checkpoint_path: str) -> None:  # resumable with the Tuner
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


class GreedySearch(_Walk):
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
            return Searcher.FINISHED  # no uniform alpha meets the target: nothing to lower
        group = self._next_group()
        if group is not None:
            return self._propose(trial_id, group, {**self.current, group: self._lower(self.current[group])})
        return Searcher.FINISHED if not self.queue else None

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


class BestFirstSearch(_Walk):
    """A per-layer walk that spends the accuracy where it buys the most: at every step it lowers the group whose
    one-rung step loses the least, measured by the validation loss (lazy best-first descent).

    The walk, as with one trial at a time: the uniform alphas from the highest down until one misses the target;
    the lowest feasible one before the miss is the starting point (as :class:`GreedySearch`). Every group's
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
            action = _BestFirstWalk(self).replay(self.proposals[:m]).next(self.proposals[m:])
            if action is Searcher.FINISHED:
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
        return _BestFirstWalk(self).replay(self.proposals[:known]).current

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if any(t == trial_id for t, *_ in self.proposals):
            ok = bool(not error and result and result.get("final"))
            self.results[trial_id] = (ok and result["accuracy"] >= self.target,
                                      float(result.get("loss", math.inf)) if ok else math.inf)


class _BestFirstWalk:
    """The state of a :class:`BestFirstSearch` walk after some of its results, replayed in proposal order."""

    def __init__(self, search: BestFirstSearch):
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

    def replay(self, proposals) -> _BestFirstWalk:
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
                return Searcher.FINISHED  # even the highest uniform alpha misses the target
            proposed = set(self.uniform_feasible) | {alphas[self.groups[0]] for _, g, alphas in pending if g is None}
            left = [a for a in sorted(self.ladder, reverse=True) if a not in proposed]
            return (None, dict.fromkeys(self.groups, left[0])) if left else BestFirstSearch._WAIT
        ranked = self._ranked()
        measuring = {g for _, g, alphas in pending if g in ranked and alphas == self._step(g)}
        for group in ranked:
            if group not in measuring:
                return group, self._step(group)
        return BestFirstSearch._WAIT if pending else Searcher.FINISHED
