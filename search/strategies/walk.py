"""What the deterministic per-layer walks share: a walk down a ladder of alphas, group by group, as plain
Python (no Ray): ``suggest(trial_id)`` proposes a complete point, ``None`` (wait for results) or :data:`FINISHED`;
``on_trial_complete(trial_id, result, error)`` takes a trial's result. :class:`search.strategies.base.WalkSearcher`
hands a walk to Ray Tune.
"""

from __future__ import annotations

import pickle

FINISHED = "FINISHED"  # what a walk's suggest returns when it has nothing more to propose (Tune's Searcher.FINISHED)


class Walk:
    """A per-group walk down a ladder of alphas (``alphas``, lowest first once sorted), proposing configs with
    ``keys[group]`` set to the group's alpha and ``fixed`` holding the other dimensions. Its whole state is plain
    data: saved and restored with the Tuner (``--resume``)."""

    def __init__(self, groups: list[str], alphas: list[float], keys: dict[str, str], target_accuracy: float,
                 fixed: dict | None = None):
        self.groups, self.keys, self.target = list(groups), keys, target_accuracy
        self.ladder = sorted(alphas)
        self.fixed = dict(fixed or {})

    def _config(self, alphas: dict[str, float]) -> dict:
        return {**self.fixed, **{self.keys[g]: a for g, a in alphas.items()}}

    def save(self, checkpoint_path: str) -> None:  # resumable with the Tuner (WalkSearcher)
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
