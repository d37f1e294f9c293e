"""CKKS cost presets: how many levels each operation consumes and how long it takes.

A preset is plain data (YAML) validated at the edge by :func:`load_preset`: a built-in
name (:func:`preset_names`, files in ``pann/cost/presets/``) or the path of a user's file::

    name: my-params
    description: one line for tables (optional)
    source: where the numbers come from (papers, measurements)
    prescale_folded: true      # 1/B of a polynomial ReLU folded into the previous layer (true, false,
                               # or where-exact: where `pann fhe-check` folds it, see pann.fhe.graph.fold_prescales)
    levels:
      bootstrap: 16            # levels available after a bootstrap
      fresh_input: 18          # levels of a freshly encrypted input
      conv: 2                  # a convolution with its folded batch norm
      linear: 1                # a fully connected layer
      avgpool: 1               # average pooling
      scale: 1                 # a multiplication by a constant that folds nowhere
    times:                     # seconds, an estimate
      bootstrap: 368.7         # per bootstrap
      multiplication: 5.33     # per non-scalar (ciphertext x ciphertext) multiplication
      linear_level: 5.33       # per level of a convolution, linear layer or average pooling
      scale_level: 5.33        # per level of a constant multiplication
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


_PRESET_DIR = Path(__file__).with_name("presets")


class PresetError(ValueError):
    """A cost preset that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class LevelCosts:
    """Levels available (``bootstrap``, ``fresh_input``) and consumed (the rest) per operation."""

    bootstrap: int
    fresh_input: int
    conv: int
    linear: int
    avgpool: int
    scale: int


@dataclass(frozen=True)
class OperationTimes:
    """Seconds per bootstrap, per non-scalar multiplication and per level of linear / constant operations."""

    bootstrap: float
    multiplication: float
    linear_level: float
    scale_level: float


WHERE_EXACT = "where-exact"  # prescale_folded: folded where pann fhe-check folds it (pann.fhe.graph.fold_prescales)


@dataclass(frozen=True)
class CostPreset:
    """A CKKS parameter set as the cost model sees it (see the module docstring for the fields)."""

    name: str
    source: str
    prescale_folded: bool | str  # True, False or WHERE_EXACT
    levels: LevelCosts
    times: OperationTimes
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, origin: str = "preset") -> CostPreset:
        """Validate plain data; raise :class:`PresetError` (naming ``origin``) listing every missing,
        unknown or ill-typed field."""
        if not isinstance(data, Mapping):
            raise PresetError(f"{origin}: a preset must be a mapping of fields, got {type(data).__name__}")
        problems = _problems(data, _TOP, optional=("description",))
        for key, checks in (("levels", _LEVELS), ("times", _TIMES)):
            if isinstance(data.get(key), Mapping):
                problems += _problems(data[key], checks, prefix=f"{key}.")
        if problems:
            raise PresetError(f"{origin}: invalid cost preset: " + "; ".join(problems))
        return cls(name=data["name"], source=data["source"].strip(), prescale_folded=data["prescale_folded"],
                   levels=LevelCosts(**data["levels"]), times=OperationTimes(**data["times"]),
                   description=data.get("description", "").strip())


_Check = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TEXT: _Check = (lambda v: isinstance(v, str) and v.strip() != "", "must be non-empty text")
_MAPPING: _Check = (lambda v: isinstance(v, Mapping), "must be a mapping of fields")
_TOP: dict[str, _Check] = {"name": _TEXT, "source": _TEXT, "description": _TEXT, "levels": _MAPPING,
                           "times": _MAPPING,
                           "prescale_folded": (lambda v: isinstance(v, bool) or v == WHERE_EXACT,
                                               f"must be true, false or {WHERE_EXACT}")}
_LEVELS: dict[str, _Check] = {f.name: (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0")
                              for f in fields(LevelCosts)}
_LEVELS["bootstrap"] = (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
_TIMES: dict[str, _Check] = {f.name: (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
                                      and v >= 0, "must be a number >= 0") for f in fields(OperationTimes)}


def _problems(data: Mapping, checks: Mapping[str, _Check], prefix: str = "", optional=()) -> list[str]:
    """Unknown, missing and ill-typed fields of one mapping, each named ``prefix + field``."""
    return [*(f"{prefix}{k}: unknown field" for k in data if k not in checks),
            *(f"{prefix}{k}: missing" for k in checks if k not in data and k not in optional),
            *(f"{prefix}{k}: {message} (got {data[k]!r})" for k, (ok, message) in checks.items()
              if k in data and not ok(data[k]))]


def preset_names() -> list[str]:
    """The built-in presets."""
    return sorted(p.stem for p in _PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> CostPreset:
    """A built-in preset by name, or the preset in a user's YAML file.

    Raises :class:`PresetError` naming the file and every bad field, and
    ``FileNotFoundError`` for a name that is neither a built-in preset nor a file.
    """
    text = str(name_or_path)
    if text in preset_names():
        origin, content = f"built-in preset {text}", (_PRESET_DIR / f"{text}.yaml").read_text()
    else:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"unknown cost preset {text!r}: not a file, and the built-in presets are "
                                    + ", ".join(preset_names()))
        origin, content = str(path), path.read_text()
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise PresetError(f"{origin}: not valid YAML: {exc}") from exc
    return CostPreset.from_dict(data, origin)
