"""The parts of Ray and Optuna that ``search/strategies/`` builds on, checked on the installed versions.

The strategies are Tune ``Searcher`` s; the Optuna one converts Tune's domains with the public
``OptunaSearch.convert_search_space`` and runs Optuna's ask-and-tell. One Optuna detail is private: a trial a
killed driver left RUNNING is adopted through ``optuna.trial.Trial(study, trial_id)`` and ``FrozenTrial._trial_id``,
given the parameters it lacks with ``Trial._suggest`` (as ``Study.ask`` does); the accuracy constraint is recorded
with ``Trial.set_constraint`` (new in Optuna 5.0, read back as ``FrozenTrial.constraints``). An upgrade that changes
any of them fails here, in seconds, instead of in the middle of a search; ``pyproject.toml`` pins Ray to the minor
version checked here. No search is run.
"""

import inspect
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState
from packaging.requirements import Requirement
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.strategies.walk import FINISHED

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
    # The strategies run on Tune's searcher interface and domain conversion: any other minor version is untested.
    specifier = declared("ray").specifier
    major, minor = (int(part) for part in version("ray").split(".")[:2])
    assert specifier.contains(f"{major}.{minor}.0") and not specifier.contains(f"{major}.{minor + 1}.0")


def test_the_parts_of_ray_tune_the_strategies_build_on():
    # A searcher is Tune's Searcher interface; Tune converts its own domains to Optuna's distributions.
    for name, parameters in (("suggest", ["self", "trial_id"]), ("on_trial_complete", ["self", "trial_id", "result",
                                                                                         "error"]),
                             ("save", ["self", "checkpoint_path"]), ("restore", ["self", "checkpoint_path"])):
        assert list(inspect.signature(getattr(Searcher, name)).parameters) == parameters, name
    assert Searcher.FINISHED == FINISHED
    converted = OptunaSearch.convert_search_space({"x": tune.uniform(0, 1), "n": tune.randint(5, 10),
                                                   "s": tune.choice(["a", "b"])})
    assert converted == {"x": FloatDistribution(0, 1), "n": IntDistribution(5, 9), "s": CategoricalDistribution(["a", "b"])}


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
