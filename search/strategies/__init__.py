"""Search strategies: what proposes the points a search's trials measure (the config's ``search.strategy``).

* ``optuna``: Optuna's multi-objective TPE sampler with the target accuracy as a constraint
  (:mod:`search.strategies.optuna_study`);
* ``greedy``: the deterministic per-layer baseline, round robin over the groups (:mod:`search.strategies.greedy`);
* ``best-first``: the per-layer walk that takes the step losing the least validation loss
  (:mod:`search.strategies.best_first`);
* ``lowering``: the greedy walk with training, each step fine-tuning the trained network it lowers
  (:mod:`search.strategies.lowering`).

Each is one module holding a subclass of :class:`~search.strategies.base.Strategy` with its ``name``. The modules of
this package are imported by :func:`strategies`, so adding a strategy is one new module here (and its test): the
config checks, the runner and the docs of ``search.strategy`` find it by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from search.strategies.base import _REGISTRY, Strategy

__all__ = ["Strategy", "strategies", "strategy"]


def strategies() -> dict[str, type[Strategy]]:
    """Every strategy by name (the modules of this package, imported once)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def strategy(name: str) -> type[Strategy]:
    """The strategy ``name`` (``ValueError`` naming the known ones otherwise)."""
    known = strategies()
    if name not in known:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(known)}")
    return known[name]
