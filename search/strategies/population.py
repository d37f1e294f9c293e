"""``search.strategy: pbt``: population-based training (Ray Tune's ``PopulationBasedTraining``) over the alphas of
networks trained at their own polynomials: lowering precision while training.

The population (``budget.trials`` members, every one a Tune trial from the start: as many train at a time as the
cluster's CPUs allow, ``budget.cpus_per_trial`` each, while the others wait paused) starts at the uniform points of
the ladder, from the top down (a population larger than the ladder repeats it); each member fine-tunes the
pretrained backbone at its own alphas and reports after every epoch. Every ``search.perturbation_interval`` epochs,
once every member has got there, Tune ranks them by :func:`search.trial.score` (every feasible point above every
infeasible one, the cheaper the higher): a member in the bottom quarter takes over the latest checkpoint of one in
the top quarter (weights, optimizer, schedule, epoch) with that member's alphas, one group lowered one rung of the
ladder (the group drawn with the search's seed among those above the bottom rung), and trains on; the others go on
as they are. A member trains ``space.epochs`` in all, counting the epochs of the networks it took over. Its
final accuracy, on which the answer is chosen (the exploits use each report as it comes), is its last report, or
with ``search.final_reports`` N the mean of its network's last N reports (:func:`search.trial.final_accuracy`).

The records say what each network is: a member that takes over another's checkpoint trains a new lineage
(``lineage`` in its point, ``continues`` naming the one it took over), with its own entry in the backbone store
and its own MLflow run; the run of the network it gave up ends KILLED, as a pruned trial's does. Optuna takes no
part: Tune runs PBT with its own variant generator only.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from pann.training.trainer import TrainConfig
from search import space
from search.config_checks import CONTINUES, LINEAGE, TRAINING_SEED
from search.strategies.base import WalkStrategy

__all__ = ["PopulationStrategy"]


class PopulationStrategy(WalkStrategy):
    """Population-based training over the groups' alphas (see the module's text). Like a walk, it searches the
    alphas only, on the ladder of ``space.alpha``."""

    name = "pbt"

    @classmethod
    def problems(cls, search_fields: dict[str, Any]) -> list[str]:
        problems = super().problems(search_fields) + cls.trains_at_point_problems(
            search_fields, f"the {cls.name} strategy trains every member at its own alphas")
        if search_fields.get("early_stopping") is True:
            problems.append(f"search.early_stopping: the {cls.name} strategy schedules its members itself "
                            "(population-based training, not ASHA); set it to false")
        trials = search_fields.get("trials")
        if isinstance(trials, int) and trials < 2:
            problems.append(f"budget.trials: the {cls.name} strategy's population needs at least 2 members")
        return problems

    def __init__(self, search, groups):
        super().__init__(search, groups)
        self._random = random.Random(search.seed)

    def cut_off(self, results) -> bool:
        """PBT stops no member: one that ended without its final report and without an error was cut off (an
        interrupt), as were the members never started."""
        return len(results) < self.search.trials or any(
            r.error is None and not (r.metrics or {}).get("final") for r in results)

    def searcher(self) -> None:
        return None  # Tune's variant generator: one trial per member of param_space's grid

    def starts(self) -> dict[str, dict[str, float]]:
        """Each member's first point by its lineage: the ladder's uniform points, from the top down."""
        ladder = self.ladder()[::-1]
        return {f"m{i}": {key: ladder[i % len(ladder)] for key in self.keys().values()}
                for i in range(self.search.trials)}

    def seeds(self) -> dict[str, int]:
        """Each member's training seed by its lineage: ``training.seed``, plus one for each time the population
        has gone round the ladder (a member that starts where another did draws its data otherwise)."""
        rungs, seed = len(self.ladder()), int(self.search.training.get("seed", TrainConfig.seed))
        return {f"m{i}": seed + i // rungs for i in range(self.search.trials)}

    def param_space(self) -> dict[str, Any]:
        starts, seeds = self.starts(), self.seeds()
        alphas = {key: tune.sample_from(lambda config, key=key: starts[config[LINEAGE]][key])
                  for key in self.keys().values()}
        return {**self.fixed(), LINEAGE: tune.grid_search(list(starts)), **alphas,
                TRAINING_SEED: tune.sample_from(lambda config: seeds[config[LINEAGE]])}

    def samples(self) -> int:
        return 1  # the grid over the lineages is the population

    def scheduler(self) -> TrialScheduler:
        # Synchronous: every member reaches the perturbation epoch before any is ranked. Asynchronous PBT ranks a
        # member against the others' last scores, often from an earlier epoch, and keeps a checkpoint only of a
        # member still on top at its own latest report: with more members than CPUs, paused in turn, the top one
        # had no checkpoint when the bottom one came to take it over (measured: no exploit in 20 member-epochs).
        return _Population(space.max_epochs(self.search.space), time_attr="epoch", metric="score", mode="max",
                           perturbation_interval=self.search.perturbation_interval,
                           custom_explore_fn=self.lower, log_config=False, synch=True)

    def lower(self, config: dict[str, Any]) -> dict[str, Any]:
        """PBT's explore: the copied member's point (``config``) with one group one rung lower, as a new lineage
        that continues the copied one. At the bottom of the ladder everywhere it stays as it is."""
        ladder = self.ladder()
        above = [key for key in self.keys().values() if ladder.index(config[key]) > 0]
        if above:
            key = self._random.choice(above)
            config[key] = ladder[ladder.index(config[key]) - 1]
        config[CONTINUES], config[LINEAGE] = config[LINEAGE], uuid.uuid4().hex[:8]
        return config


class _Population(PopulationBasedTraining):
    """Tune's PBT on the training epoch (a member that took over another's network goes on at its epoch), which
    leaves alone a member with nothing left to train: one at its last epoch (a copy would be scored untrained) or
    reporting its final score."""

    def __init__(self, epochs: int, **kwargs):
        super().__init__(**kwargs)
        self._epochs = epochs

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final") or result.get("epoch", 0) >= self._epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
