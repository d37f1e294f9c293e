"""Searchers: Optuna's multi-objective sampler with the accuracy constraint, and the greedy baseline.

Both are Ray Tune searchers (``suggest`` / ``on_trial_complete``); a trial's ``final`` result carries its
``accuracy`` and its costs. The target accuracy is a constraint, never an objective.
"""

from __future__ import annotations

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


class GreedySearch(Searcher):
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
        super().__init__(metric="accuracy", mode="max")
        self.groups, self.keys, self.target = list(groups), keys, target_accuracy
        self.ladder = sorted(alphas)
        self.fixed = dict(fixed or {})
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

    def _config(self, alphas: dict[str, float]) -> dict:
        return {**self.fixed, **{self.keys[g]: a for g, a in alphas.items()}}

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

    def save(self, checkpoint_path: str) -> None:  # resumable with the Tuner
        import pickle
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        import pickle
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
