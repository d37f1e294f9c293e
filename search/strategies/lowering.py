"""``search.strategy: lowering``: the greedy walk with training, where each step continues from the network it
lowers: progressive lowering while training (SmartPAF's progressive replacement; the PBT idea of a candidate
derived from a trained one continuing from its weights rather than from the pretrained backbone)."""

from __future__ import annotations

from typing import Any

from search.config_checks import INITIAL
from search.strategies.greedy import GreedyStrategy, GreedyWalk

__all__ = ["LoweringStrategy", "LoweringWalk"]


def _key(alphas: dict[str, float]) -> tuple:
    return tuple(sorted(alphas.items()))


class LoweringWalk(GreedyWalk):
    """:class:`~search.strategies.greedy.GreedyWalk`, whose step proposals carry ``initial``: the trained weights
    (the trial's ``backbone`` result) of the current point they lower. The uniform points train from the
    pretrained backbone; a step trains the current network with one group one rung lower, for the search's
    epochs, distilled from the pretrained backbone as every trial is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbones: dict[tuple, str] = {}  # the trained weights of each measured point, by its alphas

    def _propose(self, trial_id: str, group: str | None, alphas: dict[str, float]) -> dict:
        config = super()._propose(trial_id, group, alphas)
        if group is not None:
            config[INITIAL] = self.backbones[_key(self.current)]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        for proposal in self.queue:
            if proposal[0] == trial_id and not error and result and result.get("backbone"):
                self.backbones[_key(proposal[2])] = result["backbone"]
        super().on_trial_complete(trial_id, result, error)


class LoweringStrategy(GreedyStrategy):
    name = "lowering"

    @classmethod
    def problems(cls, search_fields: dict[str, Any]) -> list[str]:
        return super().problems(search_fields) + cls.trains_at_point_problems(
            search_fields, f"the {cls.name} walk trains each step at its own alphas from the network it lowers")

    def walk(self) -> LoweringWalk:
        return LoweringWalk(list(self.groups), self.ladder(), self.keys(), self.search.validation_target,
                            self.fixed())
