"""CKKS parameter presets for the encrypted check, and the memory they need.

A preset is an Orion parameter file (``ckks_params``, ``boot_params``, ``orion``) with a
``pann`` section that says whether it is secure and how much memory it takes. The shipped
presets live in ``pann/fhe/presets/``; ``--params`` takes a preset name or a path.
This module does not import the FHE library.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "leveled-128"
_GIB = 1 << 30


@dataclass(frozen=True)
class Params:
    """A validated preset: the Orion configuration and what ``pann`` knows about it.

    ``memory_gib`` maps ``"leveled"`` (keys, no bootstrapping) and ``"bootstrapping"``
    (plus one bootstrapper) to the peak memory the check needs.
    """

    name: str
    orion: dict
    secure: bool
    security: str
    memory_gib: dict[str, float]

    @property
    def log_n(self) -> int:
        return int(self.orion["ckks_params"]["LogN"])

    @property
    def levels(self) -> int:
        """Levels between bootstraps, ``len(LogQ) - 1``."""
        return len(self.orion["ckks_params"]["LogQ"]) - 1

    @property
    def slots(self) -> int:
        return 1 << (self.log_n - 1)

    @property
    def log_qp(self) -> int:
        """``log2(QP)`` of the leveled key-switching modulus (bootstrapping adds its own moduli)."""
        ckks = self.orion["ckks_params"]
        return sum(ckks["LogQ"]) + sum(ckks["LogP"])

    @property
    def bootstraps(self) -> bool:
        """Whether the preset has bootstrapping parameters (``boot_params``)."""
        return "boot_params" in self.orion

    def estimated_memory_gib(self, bootstrapping: bool) -> float:
        return self.memory_gib["bootstrapping" if bootstrapping else "leveled"]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_params(source: str | Path | dict) -> Params:
    """A preset by name (see :func:`preset_names`), a YAML path, or the parsed mapping.

    Raises ``ValueError`` listing every missing or malformed field at once.
    """
    if isinstance(source, dict):
        data, name = copy.deepcopy(source), str(source.get("comment", "custom"))
    else:
        path = Path(source)
        if not path.suffix and (PRESET_DIR / f"{path}.yaml").is_file():
            path = PRESET_DIR / f"{path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"FHE parameters {source!r}: neither a file nor a preset "
                                    f"({', '.join(preset_names())})")
        data, name = yaml.safe_load(path.read_text()), path.stem
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping")
    problems = _problems(data)
    if problems:
        raise ValueError(f"FHE parameters {name}: " + "; ".join(problems))
    meta = data.pop("pann")
    return Params(name, data, bool(meta["secure"]), str(meta["security"]),
                  {k: float(v) for k, v in meta["memory_gib"].items()})


def _problems(data: dict) -> list[str]:
    problems = []
    ckks = data.get("ckks_params")
    if not isinstance(ckks, dict):
        return ["ckks_params: missing"] + ([] if isinstance(data.get("pann"), dict) else ["pann: missing"])
    for key in ("LogN", "LogScale", "H"):
        if not isinstance(ckks.get(key), int) or ckks.get(key) <= 0:
            problems.append(f"ckks_params.{key}: expected a positive integer, got {ckks.get(key)!r}")
    for key in ("LogQ", "LogP"):
        value = ckks.get(key)
        if not (isinstance(value, list) and value and all(isinstance(v, int) and 0 < v <= 61 for v in value)):
            problems.append(f"ckks_params.{key}: expected a list of bit sizes 1..61, got {value!r}")
    orion = data.get("orion", {})
    if orion.get("io_mode", "none") not in ("none", "save"):
        problems.append(f"orion.io_mode: 'none' or 'save' (keys and diagonals in a temporary folder), "
                        f"got {orion.get('io_mode')!r}")
    meta = data.get("pann")
    if not isinstance(meta, dict):
        return problems + ["pann: missing (secure, security, memory_gib)"]
    if not isinstance(meta.get("secure"), bool):
        problems.append(f"pann.secure: expected true or false, got {meta.get('secure')!r}")
    if not isinstance(meta.get("security"), str):
        problems.append("pann.security: expected a sentence saying which security level and why")
    memory = meta.get("memory_gib")
    if not (isinstance(memory, dict) and all(isinstance(memory.get(k), (int, float)) and memory[k] > 0
                                             for k in ("leveled", "bootstrapping"))):
        problems.append(f"pann.memory_gib: expected positive leveled and bootstrapping, got {memory!r}")
    return problems


def available_memory_gib(meminfo: str | Path = "/proc/meminfo") -> float:
    """``MemAvailable`` of this machine in GiB (``inf`` where the kernel does not report it)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / _GIB
    except OSError:
        pass
    return math.inf


# What the process holds outside Lattigo's Go heap (Python, torch, Orion's network and data), with room to spare:
# measured 1.5 GiB beside an 18 GiB Go heap for the encrypted ResNet-20 (docs/results.md, "What does it cost under
# encryption?").
PYTHON_SIDE_GIB = 4.0


def go_memory_limit(available_gib: float, python_side_gib: float = PYTHON_SIDE_GIB) -> str:
    """``GOMEMLIMIT`` for Lattigo's Go runtime: what is available less what the Python side holds, in whole GiB
    (at least 1). Near this soft limit Go collects and returns freed memory to the system at once; without it the
    heap that compilation leaves behind plus the bootstrapper outgrew a 23 GiB machine (docs/results.md, "What does it
    cost under encryption?")."""
    return f"{max(1, math.floor(available_gib - python_side_gib))}GiB"


class InsufficientMemory(ValueError):
    """The preset's memory estimate exceeds what this machine has available."""


def check_resources(params: Params, depth: int, available_gib: float) -> tuple[bool, float]:
    """``(bootstrapping, estimated GiB)`` for a network of multiplicative ``depth``.

    Raises ``ValueError`` when the network needs more levels than a preset without
    bootstrapping has, and :class:`InsufficientMemory` when the estimate exceeds ``available_gib``.
    """
    bootstrapping = depth > params.levels
    if bootstrapping and not params.bootstraps:
        raise ValueError(f"the network needs {depth} levels but FHE parameters {params.name} have "
                         f"{params.levels} and no bootstrapping; use a preset with boot_params "
                         f"(e.g. bootstrap-128)")
    need = params.estimated_memory_gib(bootstrapping)
    if need > available_gib:
        raise InsufficientMemory(
            f"FHE parameters {params.name} need about {need:.1f} GiB "
            f"({'with' if bootstrapping else 'without'} bootstrapping) but this machine has "
            f"{available_gib:.1f} GiB available; free memory, or use a smaller preset or network")
    return bootstrapping, need
