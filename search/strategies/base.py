"""The base class of a search strategy: what proposes the points a search's trials measure.

A strategy is built from the validated search config and its layer groups, and gives Ray Tune a searcher
(``suggest`` / ``on_trial_complete``) and a scheduler. Every searcher proposes complete points (the searched
dimensions and the config's constants), so Tune's own ``param_space`` holds only the constants; a strategy without a
searcher (population-based training, which Tune runs only with its own variant generator) gives its points as
Tune's ``param_space`` instead. A subclass with a ``name`` is registered under it (the config's
``search.strategy``); see :mod:`search.strategies`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search import space

if TYPE_CHECKING:
    from pann.conversion.groups import LayerGroups
    from search.config import SearchConfig

_REGISTRY: dict[str, type[Strategy]] = {}


class Strategy:
    """How a search chooses its points. Subclasses set ``name`` and implement :meth:`searcher`; the other methods
    have defaults that suit a strategy that keeps no records of its own."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self, search: SearchConfig, groups: LayerGroups):
        self.search, self.groups = search, groups

    @classmethod
    def problems(cls, search_fields: dict[str, Any]) -> list[str]:
        """Config problems this strategy has with the merged config fields (``search.granularity``...), one line
        each naming its field; none by default."""
        return []

    def searcher(self) -> Searcher | None:
        """The Ray Tune searcher that proposes the points (built once per search); None: Tune's own variant
        generator samples :meth:`param_space`."""
        raise NotImplementedError

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: the config's constants (the searcher proposes the rest)."""
        return space.constants(self.search.space)

    def samples(self) -> int:
        """Tune's ``num_samples``: the budget's trials."""
        return self.search.trials

    def scheduler(self) -> TrialScheduler:
        """What stops, pauses or continues running trials: ASHA on the PANN accuracy after each epoch when the
        config asks for early stopping (``search.early_stopping``, ``search.grace_period``) and trials train,
        else Tune's FIFO."""
        epochs = space.max_epochs(self.search.space)
        if self.search.early_stopping and epochs > 0:
            return ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration",
                                 grace_period=self.search.grace_period, max_t=epochs + 1)
        return FIFOScheduler()

    def cut_off(self, results) -> bool:
        """Whether trials Tune started were cut off before they reported to the searcher (an interrupt). Tune's
        results alone tell that for strategies without records of their own: never, by default."""
        return False

    def close_unfinished(self, ending: str) -> None:
        """Close what the strategy's own records hold open after the trials ended (``ending``: ``failed``,
        ``budget``, ``finished``; not called after an interrupt, whose trials a resume runs)."""


class WalkSearcher(Searcher):
    """A walk (:class:`search.strategies.walk.Walk`: plain Python) as a Ray Tune searcher; its state is saved and
    restored with the Tuner (``--resume``)."""

    def __init__(self, walk):
        super().__init__(metric="accuracy", mode="max")
        self.walk = walk

    def suggest(self, trial_id: str) -> dict | None:
        return self.walk.suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.walk.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self.walk.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.walk.restore(checkpoint_path)


class WalkStrategy(Strategy):
    """A deterministic walk over the groups' alphas: subclasses build the walk (:meth:`walk`) from the ladder of
    alphas, the dimension key of each group and the config's constants."""

    @classmethod
    def problems(cls, search_fields: dict[str, Any]) -> list[str]:
        """A walk lowers alphas only: every other dimension of the space must have one value."""
        varying = [name for name, spec in (search_fields.get("space") or {}).items()
                   if name != "alpha" and (isinstance(spec, dict) or isinstance(spec, list) and len(spec) > 1)]
        return [f"space.{name}: the {cls.name} strategy searches the alphas only; give one value "
                f"(or search.strategy: optuna)" for name in varying]

    @staticmethod
    def trains_at_point_problems(search_fields: dict[str, Any], what: str) -> list[str]:
        """The problem of a strategy that trains ``what`` at its own alphas when the space does not (one line, or
        none)."""
        from search.config_checks import AT_POINT  # config_checks imports this package for the strategies' names

        if (search_fields.get("space") or {}).get("leakage_alpha") in (AT_POINT, [AT_POINT]):
            return []
        return [f"space.leakage_alpha: {what}; set it to [{AT_POINT}] (with space.leakage: [approximation-aware] "
                "and space.epochs > 0)"]

    def walk(self):
        raise NotImplementedError

    def searcher(self) -> Searcher:
        return WalkSearcher(self.walk())

    def ladder(self) -> list[float]:
        return space.alpha_values(self.search.space)

    def keys(self) -> dict[str, str]:
        return {g: space.dimension(self.groups, g) for g in self.groups}

    def fixed(self) -> dict[str, Any]:
        return space.constants(self.search.space)
