"""The parts of Ray and Optuna that ``search/runner.py`` builds on, checked on the installed versions.

``FeasibleOnlyOptunaSearch`` subclasses Ray's ``OptunaSearch``, overrides ``suggest`` and
``on_trial_complete`` and reads its private state ``_ot_trials`` (Tune trial id -> Optuna trial),
``_ot_study``, ``_space`` and ``_completed_trials``; it adopts an orphaned trial through
``optuna.trial.Trial(study, trial_id)`` and ``FrozenTrial._trial_id`` (giving it the parameters a killed
driver left unwritten with ``Trial._suggest``, as ``Study.ask`` does), and records the accuracy
constraint with ``Trial.set_constraint`` (new in Optuna 5.0, read back as ``FrozenTrial.constraints``).
An upgrade that changes any of them fails here, in seconds, instead of in the middle of a search;
``pyproject.toml`` pins Ray to the minor version checked here. No search is run: the searcher is
built on an in-memory study and asked for one point.
"""

import inspect
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, Trial, TrialState
from packaging.requirements import Requirement
from ray.tune.search.optuna import OptunaSearch

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared(name: str) -> Requirement:
    """The requirement on ``name`` in pyproject.toml's dependency list."""
    lines = PYPROJECT.read_text().split("dependencies = [", 1)[1].split("]\n", 1)[0].splitlines()
    found = [Requirement(line.strip().strip(",").strip('"')) for line in lines if line.strip().startswith('"')]
    (requirement,) = [r for r in found if r.name == name]
    return requirement


@pytest.mark.parametrize("name", ["ray", "optuna"])
def test_installed_version_is_the_declared_one(name):
    requirement = declared(name)
    assert requirement.specifier.contains(version(name)), \
        f"{name} {version(name)} is installed but pyproject.toml declares {requirement}"


def test_ray_is_pinned_to_one_minor_version():
    # The searcher reads Ray's private attributes: any other minor version is untested.
    specifier = declared("ray").specifier
    major, minor = (int(part) for part in version("ray").split(".")[:2])
    assert specifier.contains(f"{major}.{minor}.0") and not specifier.contains(f"{major}.{minor + 1}.0")


def test_optuna_search_overridden_methods_keep_their_signatures():
    assert list(inspect.signature(OptunaSearch.suggest).parameters) == ["self", "trial_id"]
    assert list(inspect.signature(OptunaSearch.on_trial_complete).parameters) == ["self", "trial_id", "result",
                                                                                 "error"]
    for name in ("metric", "mode", "storage", "space"):
        assert name in inspect.signature(OptunaSearch.__init__).parameters


def test_optuna_search_private_state():
    searcher = OptunaSearch(space={"x": FloatDistribution(0, 1)}, metric="accuracy", mode="max")
    assert isinstance(searcher._ot_study, optuna.Study)
    assert searcher._ot_trials == {} and searcher._completed_trials == set()
    assert searcher._space == {"x": FloatDistribution(0, 1)}  # name -> Optuna distribution
    point = searcher.suggest("t1")
    assert set(point) == {"x"}
    trial = searcher._ot_trials["t1"]
    assert isinstance(trial, Trial) and trial.number == 0
    searcher.on_trial_complete("t1", {"accuracy": 0.5})
    assert "t1" in searcher._completed_trials
    (frozen,) = searcher._ot_study.get_trials(deepcopy=False)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.5


def test_optuna_trial_api_used_to_adopt_trials_and_record_constraints():
    assert list(inspect.signature(Trial.__init__).parameters) == ["self", "study", "trial_id"]
    assert list(inspect.signature(Trial.set_constraint).parameters) == ["self", "key", "value"]
    study = optuna.create_study()
    asked = study.ask()
    (running,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert isinstance(running, FrozenTrial)
    adopted = Trial(study, running._trial_id)  # what the searcher does with an orphaned trial
    assert adopted.number == asked.number
    assert list(inspect.signature(Trial._suggest).parameters) == ["self", "name", "distribution"]
    assert adopted._suggest("x", FloatDistribution(0, 1)) == study.trials[0].params["x"]
    adopted.set_constraint("accuracy", -0.25)
    study.tell(adopted, 1.0)
    assert study.trials[0].constraints == {"accuracy": -0.25}
