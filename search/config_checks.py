"""What a valid search config is: its sections and dimensions, and one checker per section.

Each checker appends a problem per bad field (``budget.trials: must be ...``) to a shared list, so that
:func:`search.config.from_dict` reports every problem at once, and normalises what it checked in the
merged values (absolute paths, named weights fetched to a local file, defaults that depend on other fields).

Longer than our ~250-line guide on purpose: every rule of every field lives here, in one place to read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pann.approximation.catalog import MAX_ALPHA, MIN_ALPHA
from pann.conversion.corrections import CORRECTIONS
from pann.conversion.groups import GRANULARITIES, is_per_network
from pann.cost.objectives import OBJECTIVES
from pann.cost.preset import load_preset
from pann.data import DATASETS, default_data_dir
from pann.models.builders import model_names
from pann.training.trainer import TrainConfig
from pann.models.weights import WEIGHTS, resolve
from search.space import INTEGER_DIMENSIONS
from search.strategies import strategies
from tracking.stores import default_tracking_uri, uri_problem

SCOPES = ("layer", "global")
# The names a config may give are those of the registries: costs (search.cost) in pann.cost.objectives.OBJECTIVES,
# post-training corrections (space.correction) in pann.conversion.corrections.CORRECTIONS, strategies
# (search.strategy) in search.strategies, granularities in pann.conversion.groups.GRANULARITIES.
# Search dimensions and what they control. Training dimensions change the backbone (and so its key in
# the backbone store); approximation dimensions only change how a trained backbone is converted.
TRAINING_DIMENSIONS = ("epochs", "lr", "weight_decay", "mixup_alpha", "leakage", "leakage_alpha",
                       "noise_factor", "slope", "distill_weight", "distill_temperature", "alpha_start",
                       "alpha_granularity")
APPROXIMATION_DIMENSIONS = ("alpha", "scope", "margin", "correction")
# space.leakage_alpha: [point] trains each candidate with its own polynomials in the loop, every layer at the alpha
# the point gives it (a network trained at one configuration is good at that one only).
AT_POINT = "point"
# A point's key (set by a strategy, not a dimension) naming the weights its training starts from.
INITIAL = "initial"
# A point's key (set by a strategy, not a dimension) naming the network a population-based member trains: its own
# entry in the backbone store, its own MLflow run.
LINEAGE = "lineage"
# ... and the lineage whose network it took over.
CONTINUES = "continues"
# ... and its training seed (members that start at the same point draw their data otherwise).
TRAINING_SEED = "training_seed"
# Fields of TrainConfig that the backbone section sets; the training section fixes the others, and a
# dimension of the search space overrides the training section's value.
_TRAINING_FIELDS_SET_BY_SEARCH = {"model", "dataset", "data_dir", "pretrained", "validation_size"}

_SECTIONS = {
    "name": None, "target_accuracy": None, "storage": None,
    "backbone": ("model", "dataset", "data_dir", "weights", "validation_from", "validation_size",
                 "confirmation_size", "calibration_size", "batchnorm_size", "weights_url"),
    "training": None,
    "space": TRAINING_DIMENSIONS + APPROXIMATION_DIMENSIONS,
    "budget": ("trials", "time_s", "concurrency", "cpus_per_trial", "gpus_per_trial", "max_failures"),
    "search": ("seed", "early_stopping", "grace_period", "depth_objective", "neighbours", "reuse_backbones",
               "granularity", "cost", "preset", "strategy", "confirmations", "compile",
               "validation_margin", "continue_lr", "perturbation_interval", "final_reports"),
    "tracking": ("uri", "experiment"),
}


def field_path(name: str) -> str:
    """Where a :class:`search.config.SearchConfig` field is set in the YAML (``trials`` -> ``budget.trials``)."""
    key = {"tracking_uri": "uri"}.get(name, name)
    return next((f"{section}.{key}" for section, keys in _SECTIONS.items()
                 if keys is not None and section != "space" and key in keys), name)


def flatten(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Nested YAML sections -> SearchConfig keyword arguments, and unknown-field problems."""
    problems = [f"{key}: unknown field" for key in data if key not in _SECTIONS]
    values: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        if section not in data:
            continue
        value = data[section]
        if keys is None or section == "space":
            values[section] = value
            continue
        if not isinstance(value, Mapping):
            problems.append(f"{section}: must be a mapping")
            continue
        problems += [f"{section}.{key}: unknown field" for key in value if key not in keys]
        for key in keys:
            if key in value:
                values[{"uri": "tracking_uri"}.get(key, key)] = value[key]
    return values, problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dimension_values(name: str, spec: Any) -> tuple[list[Any], list[str]]:
    """The values to check for one dimension (choices, or the ends of a range), and shape problems."""
    where = f"space.{name}"
    if isinstance(spec, list):
        return (spec, []) if spec else ([], [f"{where}: no values"])
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in ("low", "high", "log")]
        if unknown or "low" not in spec or "high" not in spec:
            return [], [f"{where}: a range needs exactly low, high and optionally log (got {dict(spec)})"]
        low, high = spec["low"], spec["high"]
        if name in ("scope", "correction", "leakage", "mixup_alpha", "alpha_granularity"):
            return [], [f"{where}: must be a list of choices"]
        if not (_is_number(low) and _is_number(high)) or low > high:
            return [], [f"{where}: low and high must be numbers with low <= high (got {low!r}, {high!r})"]
        if name in INTEGER_DIMENSIONS and not (_is_int(low) and _is_int(high)):
            return [], [f"{where}: low and high must be integers"]
        if spec.get("log") and low <= 0:
            return [], [f"{where}: a log range needs low > 0"]
        return [low, high], []
    return [spec], []


def _value_problems(name: str, value: Any, base: Mapping[str, Any]) -> list[str]:
    where = f"space.{name}"
    if name == "alpha":
        ok = _is_number(value) and MIN_ALPHA <= value <= MAX_ALPHA
        return [] if ok else [f"{where}: {value!r} is not a precision in {MIN_ALPHA:g}..{MAX_ALPHA:g}"]
    if name == "epochs":
        return [] if _is_int(value) and value >= 0 else [f"{where}: {value!r} is not an integer >= 0"]
    if name == "scope":
        return [] if value in SCOPES else [f"{where}: {value!r} is not one of {', '.join(SCOPES)}"]
    if name == "margin":
        return [] if _is_number(value) and value > 0 else [f"{where}: {value!r} must be positive"]
    if name == "correction":
        return [] if value in CORRECTIONS else [f"{where}: {value!r} is not one of {', '.join(CORRECTIONS)}"]
    if name == "leakage_alpha" and value == AT_POINT:
        return []
    # A training dimension: let TrainConfig judge the value.
    field_name = "alpha" if name == "leakage_alpha" else name
    trial = TrainConfig(**{**base, field_name: value})
    return [f"{where}: {p.split(': ', 1)[1]}" for p in trial.problems() if p.startswith(f"{field_name}:")]


def _resolve(path: str | None, *, relative_to: Path | None = None) -> str | None:
    if path is None:
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and relative_to is not None and not p.exists() and (relative_to / p).exists():
        p = relative_to / p
    return str(p.resolve())


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a search's storage folder (it, or the folder it would be made in, must take a new
    folder; tried with a temporary one, removed at once), or None."""
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return "is not a folder" if base == path else f"cannot be made: {base} is not a folder"
    try:
        tempfile.TemporaryDirectory(dir=base).cleanup()
    except OSError as exc:
        return f"is not a writable folder ({exc.strerror or exc})" if base == path else \
            f"cannot be made in {base} ({exc.strerror or exc})"
    return None


def _named_weights(merged: Mapping[str, Any], data_dir: Path, problems: list[str]) -> str:
    """Named weights -> their local file, fetched now so that no trial starts without them."""
    name, url = merged["weights"], merged["weights_url"]
    if url is not None and not isinstance(url, str):
        problems.append(f"backbone.weights_url: must be a URL (got {url!r})")
        return name
    try:
        return str(resolve(name, data_dir, url, model=merged["model"]))
    except (ValueError, OSError) as exc:
        problems.append(f"backbone.weights: {exc}")
        return name


def _checker(merged: dict[str, Any], problems: list[str]):
    def need(ok: bool, name: str, message: str) -> None:
        if not ok:
            problems.append(f"{name}: {message} (got {merged.get(name.split('.')[-1])!r})")
    return need


def check_identity(data: Mapping[str, Any], merged: dict[str, Any], problems: list[str]) -> None:
    need = _checker(merged, problems)
    for required in ("name", "target_accuracy", "backbone", "space"):
        if required not in data:
            problems.append(f"{required}: required")
    name = merged.get("name")
    need(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or "") is not None, "name",
         "must be a non-empty name of letters, digits, '.', '_' or '-'")
    target = merged.get("target_accuracy")
    need(_is_number(target) and 0 < target <= 1, "target_accuracy", "must lie in (0, 1]")
    need(isinstance(merged["storage"], str) and merged["storage"] != "", "storage", "must be a folder path")
    need(isinstance(merged["experiment"], str) and merged["experiment"] != "", "tracking.experiment",
         "must be a non-empty name")
    if not merged["tracking_uri"]:
        merged["tracking_uri"] = default_tracking_uri()
    elif not isinstance(merged["tracking_uri"], str):
        problems.append("tracking.uri: must be a string")
    elif uri_problem(merged["tracking_uri"]):
        problems.append(f"tracking.uri: {uri_problem(merged['tracking_uri'])}")
    if isinstance(merged["storage"], str) and merged["storage"]:
        merged["storage"] = _resolve(merged["storage"])
        problem = _folder_problem(Path(merged["storage"]))
        if problem:
            problems.append(f"storage: {merged['storage']} {problem}")


def check_backbone(merged: dict[str, Any], problems: list[str]) -> None:
    need = _checker(merged, problems)
    merged.setdefault("model", "resnet20")
    merged.setdefault("dataset", "cifar10")
    need(merged["model"] in model_names(), "backbone.model", "unknown model")
    need(merged["dataset"] in DATASETS, "backbone.dataset", f"expected one of {', '.join(DATASETS)}")
    need(merged["validation_from"] in ("train", "test"), "backbone.validation_from", "expected 'train' or 'test'")
    for key in ("validation_size", "calibration_size", "batchnorm_size"):
        need(_is_int(merged[key]) and merged[key] >= 1, f"backbone.{key}", "must be an integer >= 1")
    need(_is_int(merged["confirmation_size"]) and merged["confirmation_size"] >= 0, "backbone.confirmation_size",
         "must be an integer >= 0 (0: the answer is picked on the validation images)")
    given = merged.get("data_dir") or os.environ.get("PANN_DATA_DIR")
    data_dir = Path(_resolve(merged.get("data_dir") or str(default_data_dir())))
    merged["data_dir"] = str(data_dir)
    if merged["dataset"] != "synthetic" and not data_dir.is_dir():
        if given:
            problems.append(f"backbone.data_dir: {data_dir} does not exist (set it or PANN_DATA_DIR)")
        else:  # the default ./data, where torchvision downloads the dataset
            data_dir.mkdir(parents=True)
    merged["weights_url"] = merged.get("weights_url") or os.environ.get("PANN_WEIGHTS_URL") or None
    if isinstance(merged.get("weights"), str) and merged["weights"] in WEIGHTS:
        merged["weights"] = _named_weights(merged, data_dir, problems)
    else:
        merged["weights"] = _resolve(merged.get("weights"), relative_to=data_dir)
        if merged["weights"] is not None and not Path(merged["weights"]).is_file():
            problems.append(f"backbone.weights: file not found ({merged['weights']}); "
                            f"named weights: {', '.join(WEIGHTS)}")


def check_budget(merged: dict[str, Any], problems: list[str]) -> None:
    need = _checker(merged, problems)
    for key in ("trials", "concurrency"):
        need(_is_int(merged[key]) and merged[key] >= 1, f"budget.{key}", "must be an integer >= 1")
    need(_is_int(merged["max_failures"]) and merged["max_failures"] >= 0, "budget.max_failures",
         "must be an integer >= 0")
    need(merged["time_s"] is None or _is_number(merged["time_s"]) and merged["time_s"] > 0, "budget.time_s",
         "must be positive or null")
    need(_is_number(merged["cpus_per_trial"]) and merged["cpus_per_trial"] > 0, "budget.cpus_per_trial",
         "must be positive")
    gpus = merged["gpus_per_trial"]
    need(_is_number(gpus) and gpus >= 0 and (gpus <= 1 or float(gpus).is_integer()), "budget.gpus_per_trial",
         "must be >= 0, a fraction of one GPU or a whole number of GPUs")


def check_search(merged: dict[str, Any], problems: list[str]) -> None:
    need = _checker(merged, problems)
    need(_is_int(merged["seed"]), "search.seed", "must be an integer")
    for key in ("early_stopping", "depth_objective", "reuse_backbones", "compile"):
        need(isinstance(merged[key], bool), f"search.{key}", "must be true or false")
    need(_is_int(merged["grace_period"]) and merged["grace_period"] >= 1, "search.grace_period",
         "must be an integer >= 1")
    need(merged["granularity"] in GRANULARITIES, "search.granularity", f"expected one of {', '.join(GRANULARITIES)}")
    need(merged["cost"] in OBJECTIVES, "search.cost", f"expected one of {', '.join(OBJECTIVES)}")
    known = strategies()
    need(merged["strategy"] in known, "search.strategy", f"expected one of {', '.join(known)}")
    need(_is_int(merged["confirmations"]) and merged["confirmations"] >= 1, "search.confirmations",
         "must be an integer >= 1")
    margin, target = merged["validation_margin"], merged.get("target_accuracy")
    target_ok = _is_number(target) and 0 < target <= 1  # else target_accuracy is the field to blame
    need(_is_number(margin) and 0 <= margin and (not target_ok or target + margin <= 1),
         "search.validation_margin", "must be a number >= 0 with target_accuracy + margin <= 1 "
         "(e.g. 0.005: half a point)")
    lr = merged["continue_lr"]
    need(lr is None or _is_number(lr) and lr > 0, "search.continue_lr",
         "must be a learning rate > 0, or null for the training's own")
    if lr is not None and merged["strategy"] != "lowering":
        problems.append(f"search.continue_lr: only the lowering strategy continues trained networks "
                        f"(search.strategy is {merged['strategy']!r})")
    need(_is_int(merged["perturbation_interval"]) and merged["perturbation_interval"] >= 1,
         "search.perturbation_interval", "must be an integer >= 1 (epochs between population-based exploits)")
    per_network = merged["granularity"] in GRANULARITIES and is_per_network(merged["granularity"])
    at_point = _trains_at_point(merged.get("space"))
    final_reports = _is_int(merged["final_reports"]) and merged["final_reports"] >= 1
    need(final_reports, "search.final_reports",
         "must be an integer >= 1 (the last validation reports a trained network's final accuracy averages)")
    if final_reports and merged["final_reports"] > 1 and not at_point:
        problems.append("search.final_reports: averages the reports of networks trained at their own alphas; "
                        "set space.leakage_alpha: [point] or leave it at 1")
    if merged["neighbours"] is None:
        merged["neighbours"] = 1 if per_network and not at_point else 0
    need(_is_int(merged["neighbours"]) and merged["neighbours"] >= 0, "search.neighbours",
         "must be an integer >= 0")
    if not per_network and merged["neighbours"]:
        problems.append(f"search.neighbours: must be 0 with granularity {merged['granularity']!r} "
                        "(neighbouring alphas shift the whole network)")
    elif at_point and merged["neighbours"]:
        problems.append("search.neighbours: must be 0 when candidates train at their own alphas (space.leakage_alpha: "
                        "[point]): a network trained at one alpha is good at that one only")
    try:  # every trial reports its network cost under the preset
        load_preset(merged["preset"])
    except (ValueError, FileNotFoundError) as exc:
        problems.append(f"search.preset: {exc}")


def check_training(merged: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Validate the fixed training fields; return the TrainConfig fields the space is judged against."""
    training = merged.get("training") or {}
    if not isinstance(training, Mapping):
        problems.append("training: must be a mapping of pann.training.TrainConfig fields")
        training = {}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in training:
        if key not in train_fields:
            problems.append(f"training.{key}: unknown field")
        elif key in _TRAINING_FIELDS_SET_BY_SEARCH:
            problems.append(f"training.{key}: set in the backbone section, not here")
    training = {k: v for k, v in training.items() if k in train_fields and k not in _TRAINING_FIELDS_SET_BY_SEARCH}
    merged["training"] = dict(training)
    base = {**training, "model": merged["model"] if merged["model"] in model_names() else "resnet20",
            "dataset": merged["dataset"] if merged["dataset"] in DATASETS else "cifar10",
            # the teacher of distillation: the backbone's weights, judged in the backbone section
            "pretrained": merged["weights"] if merged.get("weights") and Path(merged["weights"]).is_file() else None}
    problems += [f"training.{p}" for p in TrainConfig(**base).problems()]
    return base


def _trains_at_point(space: Any) -> bool:
    return isinstance(space, Mapping) and AT_POINT in _dimension_values("leakage_alpha", space.get("leakage_alpha"))[0]


def _at_point_problems(space: Mapping[str, Any], merged: Mapping[str, Any], trains: bool, per_layer: bool) -> list[str]:
    """Training at the point's own alphas: only with approximation-aware training, not mixed with fixed
    training alphas; a per-layer search that trains must train that way."""
    if not _trains_at_point(space):
        if per_layer and trains:
            return [f"space.epochs: granularity {merged['granularity']!r} trains each candidate at its own alphas: "
                    "add space.leakage_alpha: [point] and space.leakage: [approximation-aware] (or set epochs to 0 "
                    "for a post-training search)"]
        return []
    problems = []
    if _dimension_values("leakage_alpha", space["leakage_alpha"])[0] != [AT_POINT]:
        problems.append(f"space.leakage_alpha: {AT_POINT!r} (every candidate trained at its own alphas) cannot be "
                        "mixed with fixed training alphas")
    leakage = _dimension_values("leakage", space.get("leakage", [merged["training"].get("leakage", "none")]))[0]
    if leakage != ["approximation-aware"]:
        problems.append("space.leakage: training at the point's own alphas needs [approximation-aware] "
                        f"(got {leakage!r})")
    if not trains:
        problems.append(f"space.leakage_alpha: {AT_POINT!r} trains each candidate; give space.epochs a value > 0")
    return problems


def check_space(merged: dict[str, Any], base: Mapping[str, Any], problems: list[str]) -> None:
    space = merged.get("space")
    if not isinstance(space, Mapping) or not space:
        problems.append("space: empty; give at least the alpha range to search")
        space = {}
    problems += [f"space.{key}: unknown dimension" for key in space
                 if key not in TRAINING_DIMENSIONS + APPROXIMATION_DIMENSIONS]
    if space and "alpha" not in space:
        problems.append("space.alpha: required (the precisions to search)")
    varying, alphas = 0, []
    if _trains_at_point(space):  # the training values are judged with the approximation-aware training they join
        ladder = [a for a in _dimension_values("alpha", space.get("alpha"))[0] if _is_number(a)]
        base = {**base, "leakage": "approximation-aware", **({"alpha": min(ladder)} if ladder else {})}
    for dim, spec in space.items():
        if dim not in TRAINING_DIMENSIONS + APPROXIMATION_DIMENSIONS:
            continue
        values, shape = _dimension_values(dim, spec)
        problems += shape
        for value in values:
            problems += _value_problems(dim, value, base)
        if dim == "alpha":
            alphas = values
        varying += isinstance(spec, Mapping) or isinstance(spec, list) and len(spec) > 1
    per_layer = merged.get("granularity") in GRANULARITIES and not is_per_network(merged["granularity"])
    fractional = [a for a in alphas if _is_number(a) and not float(a).is_integer()]
    if fractional and not per_layer:
        # The network curve records alphas as MLflow steps, which are integers: refuse what would be stored wrong.
        problems.append(f"space.alpha: {fractional[0]!r} is not a whole number of bits; fractional alphas (a "
                        "ladder of rungs) need granularity stage or layer")
    if space and varying == 0 and not per_layer:
        problems.append("space: nothing to search (every dimension has a single value)")
    epochs, _ = _dimension_values("epochs", space.get("epochs", [merged["training"].get("epochs", 0)]))
    if merged["weights"] is None and any(e == 0 for e in epochs if _is_number(e)):
        problems.append("space.epochs: 0 (no training) needs backbone.weights")
    trains = any(e != 0 for e in epochs if _is_number(e))
    problems += _at_point_problems(space, merged, trains, per_layer)
    merged["space"] = dict(space)
    strategy = strategies().get(merged.get("strategy"))
    if strategy is not None:
        problems += strategy.problems(merged)
