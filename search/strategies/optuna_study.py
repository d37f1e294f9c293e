"""``search.strategy: optuna``: Optuna's multi-objective TPE sampler proposes the points, through Optuna's own
ask-and-tell interface, with the target accuracy as a constraint and the study in ``runs/NAME/optuna.db``.

Objectives (given to the study, never to ``TuneConfig``): minimise the cost (``search.cost``: an objective of
:mod:`pann.cost.objectives`), maximise ``accuracy`` and, optionally, minimise ``depth``. The target accuracy is the
constraint ``target - accuracy <= 0``. A per-layer study is warm-started with the uniform points (every group at
one alpha; the other dimensions are left to the sampler).

Only a result marked ``final`` is told as COMPLETE: a trial that stopped before it (ASHA, a time budget) is PRUNED,
one that failed FAIL. A point the sampler proposes again (TPE does, on a space of choices) is not measured again:
the study is told the earlier trial's outcome for it, marked ``duplicate_of``, and asked again, so every Tune trial
measures a new point (a pruned candidate is not trained again from the start). One Optuna detail is private (:func:`_adopt`): a trial a killed driver left RUNNING in the
study is adopted by a resumed search, with the parameters it lacks, so the resume asks no extra trial.
"""

from __future__ import annotations

import logging
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from pann.cost.objectives import objective
from search import space
from search.strategies.base import Strategy

__all__ = ["DUPLICATE", "OptunaSearcher", "OptunaStrategy"]

logger = logging.getLogger(__name__)

DUPLICATE = "duplicate_of"  # user attribute of a study trial that repeated an earlier one's point (not measured)


class OptunaSearcher(Searcher):
    """Optuna's ask-and-tell as a Ray Tune searcher.

    ``distributions`` are the searched dimensions (Optuna distributions), ``fixed`` the constants every point
    carries; ``metrics`` and ``directions`` the objectives; ``warm_start`` points (possibly partial) are enqueued
    when the study is created. A proposed point carries its Optuna trial number as ``optuna_trial``.
    """

    def __init__(self, distributions: dict, fixed: dict, metrics: list[str], directions: list[str], storage: str,
                 study_name: str, seed: int, target_accuracy: float, warm_start: list[dict] = ()):
        super().__init__(metric="accuracy", mode="max")
        self.distributions, self.fixed, self.metrics = dict(distributions), dict(fixed), list(metrics)
        self.target_accuracy = target_accuracy
        self.study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                         sampler=optuna.samplers.TPESampler(seed=seed),
                                         pruner=optuna.pruners.NopPruner(), directions=list(directions))
        for point in warm_start:
            self.study.enqueue_trial(point)
        self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
        self.told: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.trials:
            self.trials[trial_id] = self._orphan() or self._ask()
        trial = self.trials[trial_id]
        return {**self.fixed, **trial.params, "optuna_trial": trial.number}

    def _ask(self, tries: int = 100) -> optuna.Trial:
        """A trial at a point no earlier trial has measured or is measuring; the sampler's repeats are told the
        earlier outcome (COMPLETE with its values and constraint, else PRUNED), marked ``duplicate_of``. After
        ``tries`` repeats (a space measured through) the last one is measured again."""
        for attempt in range(tries):
            trial = self.study.ask(fixed_distributions=self.distributions)
            earlier = next((t for t in self.study.get_trials(deepcopy=False)
                            if t.number != trial.number and t.params == trial.params
                            and DUPLICATE not in t.user_attrs
                            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)), None)
            if earlier is None or attempt == tries - 1:
                return trial
            trial.set_user_attr(DUPLICATE, earlier.number)
            if earlier.state == TrialState.COMPLETE:
                for key, value in earlier.constraints.items():
                    trial.set_constraint(key, value)
                self.study.tell(trial, earlier.values)
            else:
                self.study.tell(trial, state=TrialState.PRUNED)
            logger.info("Optuna trial %d repeats trial %d's point: told its outcome, not measured again",
                        trial.number, earlier.number)
        raise AssertionError("unreachable: the last attempt returns")

    def _orphan(self) -> optuna.Trial | None:
        """A trial RUNNING in the study that no Tune trial owns (asked before a driver crash), adopted."""
        owned = {t.number for t in self.trials.values()}
        orphans = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number not in owned]
        return _adopt(self.study, orphans[0], self.distributions) if orphans else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.trials.get(trial_id)
        if trial is None or trial_id in self.told:
            return
        if error:
            # Left RUNNING: a resume runs an errored trial again (a lost node's trials), and the search's end tells
            # Optuna FAIL for those that stay so (OptunaStrategy.close_unfinished).
            return
        self.told.add(trial_id)
        if self.study.get_trials(deepcopy=False)[trial.number].state.is_finished():
            # A resume ran again a trial that had finished after Tune's last checkpoint: Optuna has its result
            # already (telling it again would raise), and MLflow keeps its first record.
            return
        if result and result.get("final"):
            trial.set_constraint("accuracy", self.target_accuracy - result["accuracy"])
            values, state = [result[m] for m in self.metrics], TrialState.COMPLETE
        else:
            values, state = None, TrialState.PRUNED
        try:
            self.study.tell(trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN objective
            logger.warning("Optuna trial %d: %s", trial.number, exc)

    def save(self, checkpoint_path: str) -> None:  # resumable with the Tuner
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


def _adopt(study: optuna.Study, frozen: optuna.trial.FrozenTrial, distributions: dict) -> optuna.Trial:
    """The live trial of a RUNNING ``frozen`` one, given every parameter of ``distributions`` it lacks the way
    ``Study.ask(fixed_distributions)`` gives them (a driver killed inside ``ask`` leaves some unwritten). Optuna has
    no public way to reopen a trial: this is the one place that uses its private ``_trial_id`` and ``_suggest``
    (tests/test_dependency_contracts.py checks them on the installed Optuna)."""
    trial = optuna.trial.Trial(study, frozen._trial_id)
    for name, distribution in distributions.items():
        if name not in frozen.params:
            trial._suggest(name, distribution)
    return trial


class OptunaStrategy(Strategy):
    name = "optuna"

    def searcher(self) -> OptunaSearcher:
        search = self.search
        metrics, directions = [objective(search.cost).metric, "accuracy"], ["minimize", "maximize"]
        if search.depth_objective:
            metrics, directions = metrics + ["depth"], directions + ["minimize"]
        # Tune's own conversion of its domains (the order and kind of distributions the sampler sees).
        distributions = OptunaSearch.convert_search_space(space.param_space(dict(search.space), self.groups))
        return OptunaSearcher(distributions, space.constants(search.space), metrics, directions, self._storage(),
                              search.name, search.seed, search.validation_target,
                              space.uniform_points(search.space, self.groups))

    def _storage(self) -> str:
        return f"sqlite:///{self.search.run_dir / 'optuna.db'}"

    def _study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.search.name, storage=self._storage())

    def _running(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def cut_off(self, results) -> bool:
        """A trial Tune started, without an error, that the study still holds RUNNING was cut off (ASHA's stops
        are told, PRUNED), and so were the trials never started."""
        running = {t.number for t in self._running(self._study())}
        return len(results) < self.search.trials or any(
            r.error is None and (r.config or {}).get("optuna_trial") in running for r in results)

    def close_unfinished(self, ending: str) -> None:
        """Trials still RUNNING in the study: PRUNED when the time budget stopped them (Tune tells the searcher
        nothing then), FAIL otherwise (asked for, never run)."""
        study = self._study()
        state = TrialState.PRUNED if ending == "budget" else TrialState.FAIL
        for trial in self._running(study):
            study.tell(trial.number, state=state)

