"""CKKS cost presets: how many levels each operation consumes and how long it takes.

A preset is plain data (YAML) validated at the edge by :func:`load_preset`: a built-in
name (:func:`preset_names`, files in ``pann/presets/``) or the path of a user's file::

    name: my-params
    source: where the numbers come from (papers, measurements)
    prescale_folded: true      # 1/B of a polynomial ReLU folded into the previous layer
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


@dataclass(frozen=True)
class CostPreset:
    """A CKKS parameter set as the cost model sees it (see the module docstring for the fields)."""

    name: str
    source: str
    prescale_folded: bool
    levels: LevelCosts
    times: OperationTimes
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, origin: str = "preset") -> CostPreset:
        """Validate plain data; raise :class:`PresetError` listing every missing, unknown or ill-typed field."""
        if not isinstance(data, Mapping):
            raise PresetError(f"{origin}: a preset must be a mapping of fields, got {type(data).__name__}")
        levels, problems = _section(data.get("levels"), LevelCosts, _level_check, "levels")
        times, more = _section(data.get("times"), OperationTimes, _time_check, "times")
        problems += more
        if isinstance(levels, dict) and levels.get("bootstrap") == 0:
            problems.append("levels.bootstrap: must be at least 1 (got 0)")
        top = {"name": _text_check, "source": _text_check, "description": _text_check,
               "prescale_folded": (lambda v: isinstance(v, bool), "must be true or false"),
               "levels": None, "times": None}
        problems = [*(f"{k}: unknown field" for k in data if k not in top),
                    *(f"{k}: missing" for k in top if k not in data and k != "description"),
                    *(f"{k}: {check[1]} (got {data[k]!r})" for k, check in top.items()
                      if check and k in data and not check[0](data[k])),
                    *problems]
        if problems:
            raise PresetError(f"{origin}: invalid cost preset: " + "; ".join(problems))
        return cls(name=data["name"], source=data["source"].strip(), prescale_folded=data["prescale_folded"],
                   levels=LevelCosts(**levels), times=OperationTimes(**times),
                   description=data.get("description", "").strip())


_Check = tuple[Callable[[Any], bool], str]
_level_check: _Check = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "must be an integer >= 0")
_time_check: _Check = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) and v >= 0, "must be a number >= 0")
_text_check: _Check = (lambda v: isinstance(v, str) and v.strip() != "", "must be non-empty text")


def _section(data: Any, kind: type, check: _Check, prefix: str) -> tuple[dict | None, list[str]]:
    """The fields of one nested mapping, and its problems (each named ``prefix.field``)."""
    if data is None:
        return None, []  # reported as missing by the caller
    if not isinstance(data, Mapping):
        return None, [f"{prefix}: must be a mapping of fields (got {data!r})"]
    names = [f.name for f in fields(kind)]
    problems = [f"{prefix}.{k}: unknown field" for k in data if k not in names]
    problems += [f"{prefix}.{k}: missing" for k in names if k not in data]
    problems += [f"{prefix}.{k}: {check[1]} (got {data[k]!r})" for k in names if k in data and not check[0](data[k])]
    return {k: data[k] for k in names if k in data}, problems


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
