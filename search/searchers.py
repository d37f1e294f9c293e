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

    First the uniform alphas, from the highest down, until one misses the target; the lowest feasible one
    is the starting point. Then, round robin over the groups, it proposes the current point with one group's
    alpha lowered one rung of ``alphas`` (one bit for a range; the next lower value of a ladder): a feasible result becomes the current point, an infeasible one retires that
    group. Proposals made from a point that has since changed are proposed again from the new one. It
    finishes when every group is retired or at its lowest alpha. ``fixed`` holds the other dimensions.
    """

    def __init__(self, groups: list[str], alphas: list[float], keys: dict[str, str], target_accuracy: float,
                 fixed: dict | None = None):
        super().__init__(metric="accuracy", mode="max")
        self.groups, self.keys, self.target = list(groups), keys, target_accuracy
        self.ladder = sorted(alphas)
        self.fixed = dict(fixed or {})
        self.uniform = sorted(alphas, reverse=True)
        self.uniform_feasible: list[float] = []
        self.uniform_failed = False
        self.current: dict[str, float] | None = None
        self.retired: set[str] = set()
        self.pending: dict[str, tuple[str | None, dict[str, float]]] = {}  # trial -> (group, proposal base)
        self.turn = 0

    def _lower(self, alpha: float) -> float:
        """The rung below ``alpha``."""
        return self.ladder[self.ladder.index(alpha) - 1]

    def _config(self, alphas: dict[str, float]) -> dict:
        return {**self.fixed, **{self.keys[g]: a for g, a in alphas.items()}}

    def _next_uniform(self, trial_id: str) -> dict | None:
        if self.uniform and not self.uniform_failed:
            alpha = self.uniform.pop(0)
            proposal = dict.fromkeys(self.groups, alpha)
            self.pending[trial_id] = (None, proposal)
            return self._config(proposal)
        if any(group is None for group, _ in self.pending.values()):
            return None  # wait for the uniform results
        if self.current is None:
            if not self.uniform_feasible:
                return Searcher.FINISHED  # no uniform alpha meets the target: nothing to lower
            self.current = dict.fromkeys(self.groups, min(self.uniform_feasible))
        return None

    def suggest(self, trial_id: str) -> dict | None:
        if self.current is None:
            point = self._next_uniform(trial_id)
            if point is not None or self.current is None:
                return point
        busy = {group for group, _ in self.pending.values()}
        open_groups = [g for g in self.groups if g not in self.retired and self.current[g] > self.ladder[0]]
        for offset in range(len(self.groups)):
            group = self.groups[(self.turn + offset) % len(self.groups)]
            if group in open_groups and group not in busy:
                self.turn = (self.groups.index(group) + 1) % len(self.groups)
                proposal = {**self.current, group: self._lower(self.current[group])}
                self.pending[trial_id] = (group, dict(self.current))
                return self._config(proposal)
        return Searcher.FINISHED if not open_groups and not self.pending else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group, base = self.pending.pop(trial_id, (None, None))
        if base is None:
            return
        feasible = bool(not error and result and result.get("final") and result["accuracy"] >= self.target)
        if group is None:  # a uniform point
            if feasible:
                self.uniform_feasible.append(base[self.groups[0]])
            else:
                self.uniform_failed = True
        elif base == self.current:
            if feasible:
                self.current = {**base, group: self._lower(base[group])}
            else:
                self.retired.add(group)

    def save(self, checkpoint_path: str) -> None:  # resumable with the Tuner
        import pickle
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        import pickle
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
