"""CKKS parameter presets for the encrypted check, and the memory they need.

A preset is an Orion parameter file (``ckks_params``, ``boot_params``, ``orion``) with a
``pann`` section that says whether it is secure and how much memory a check takes: ``memory_gib.base`` for the
process, the scheme's keys and one linear layer at a time, and, for a network that bootstraps, one bootstrapper
whose size depends on how many slots the network bootstraps (``memory_gib.bootstrapper``, by ``log2`` of the
slots, measured); ``memory_gib.parts`` gives the base measured with each linear layer's blocks in parts of at most
N diagonals (``diagonals_per_transform``). So the estimate is per network (:meth:`Params.estimated_memory_gib`). The
shipped presets live in ``pann/fhe/presets/``; ``--params`` takes a preset name or a path.
This module does not import the FHE library.
"""

from __future__ import annotations

import copy
import dataclasses
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

    ``memory_gib``: ``{"base": GiB, "bootstrapper": {log2 slots: GiB}, "parts": {N: GiB}}`` (see the module
    docstring; ``parts``: the base measured with each block in parts of at most N diagonals).
    ``diagonals_per_transform``: at most this many diagonals of a linear layer's block in one Lattigo transform,
    so in memory at a time (:func:`pann.fhe.patches.split_transforms`); ``None``: a block is one transform.
    ``encode_when_loaded``: with parts and keys on disk, no encoded diagonal is saved; each part's are encoded from
    their values when it runs (ResNet-20's work folder a third of the size or less, each diagonal encoded once
    per batch of images).
    """

    name: str
    orion: dict
    secure: bool
    security: str
    memory_gib: dict
    diagonals_per_transform: int | None = None
    cost_preset: str = "orion-resnet"  # the cost model's preset (pann.cost) that counts these moduli's levels
    encode_when_loaded: bool = False  # parts' diagonals saved as values, encoded when loaded (patches.split_transforms)

    @property
    def saves_to_disk(self) -> bool:
        """Whether keys and diagonals go to a work folder (``orion.io_mode: save``)."""
        return self.orion.get("orion", {}).get("io_mode") == "save"

    def problems(self) -> list[str]:
        """What is wrong with this combination of settings (each a line; none: it can run)."""
        if self.encode_when_loaded and not (self.diagonals_per_transform and self.saves_to_disk):
            return ["encode_when_loaded (--encode-when-loaded) needs the linear layers in parts "
                    "(--diagonals-per-transform, or pann.diagonals_per_transform) and keys and diagonals on disk "
                    "(orion.io_mode: save, as in bootstrap-128)"]
        return []

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

    def bootstrapping_log_qp(self, log_slots: int) -> int:
        """``log2(QP)`` of the bootstrapping circuit for ``2^log_slots`` slots: the preset's ``LogQ``, the moduli
        Lattigo v6.2's default circuit appends (Orion 1.0.2 sets only its ``LogN``, ``LogP``, secret and slots):
        ``min(3, log_slots)`` SlotsToCoeffs primes of 39 bits, EvalMod's ``ceil(log2(30 + 1)) + 3 = 8`` of 60 (a
        degree-30 cosine, three double angles), ``min(4, log_slots)`` CoeffsToSlots primes of 56, and
        ``boot_params.LogP``. What the security of a bootstrapping preset rests on."""
        ckks = self.orion["ckks_params"]
        circuit = min(3, log_slots) * 39 + 8 * 60 + min(4, log_slots) * 56
        return sum(ckks["LogQ"]) + circuit + sum(self.orion["boot_params"]["LogP"])

    @property
    def bootstraps(self) -> bool:
        """Whether the preset has bootstrapping parameters (``boot_params``)."""
        return "boot_params" in self.orion

    def estimated_memory_gib(self, bootstrapped_slots: int | None) -> float:
        """Peak GiB of a check whose network bootstraps tensors of up to ``bootstrapped_slots`` values (``None``:
        it does not bootstrap): ``base`` plus, when it bootstraps, the bootstrapper measured for the smallest slot
        count at least that large (the largest measured where none is)."""
        if bootstrapped_slots is None:
            return self.base_gib
        table, log_slots = self.memory_gib["bootstrapper"], self.log_slots(bootstrapped_slots)
        return self.base_gib + table[min((k for k in table if k >= log_slots), default=max(table))]

    @property
    def base_gib(self) -> float:
        """``base``; with blocks in parts of at most ``diagonals_per_transform`` diagonals, the base measured for the
        smallest part size at least that large (``memory_gib.parts``; ``base`` where none is)."""
        parts, n = self.memory_gib.get("parts") or {}, self.diagonals_per_transform
        larger = [k for k in parts if n and k >= n]
        return parts[min(larger)] if larger else self.memory_gib["base"]

    def log_slots(self, values: int) -> int:
        """``log2`` of the slots a tensor of ``values`` takes: the next power of two, at most a ciphertext's."""
        return math.ceil(math.log2(max(2, min(values, self.slots))))


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
    memory = meta["memory_gib"]
    return Params(name, data, bool(meta["secure"]), str(meta["security"]),
                  {"base": float(memory["base"]),
                   "bootstrapper": {int(k): float(v) for k, v in (memory.get("bootstrapper") or {}).items()},
                   "parts": {int(k): float(v) for k, v in (memory.get("parts") or {}).items()}},
                  meta.get("diagonals_per_transform"), meta.get("cost_preset", "orion-resnet"),
                  meta.get("encode_when_loaded", False))


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
    split = meta.get("diagonals_per_transform")
    if split is not None and not (isinstance(split, int) and not isinstance(split, bool) and split > 0):
        problems.append(f"pann.diagonals_per_transform: expected a positive number of diagonals (or none: a block "
                        f"is one transform), got {split!r}")
    if not isinstance(meta.get("encode_when_loaded", False), bool):
        problems.append(f"pann.encode_when_loaded: expected true or false, got {meta.get('encode_when_loaded')!r}")
    if not isinstance(meta.get("cost_preset", ""), str):
        problems.append(f"pann.cost_preset: expected the name of a cost preset (pann cost --preset), "
                        f"got {meta.get('cost_preset')!r}")
    memory = meta.get("memory_gib")
    if not (isinstance(memory, dict) and isinstance(memory.get("base"), (int, float)) and memory["base"] > 0):
        problems.append(f"pann.memory_gib.base: expected the GiB a check needs besides a bootstrapper, "
                        f"got {memory.get('base') if isinstance(memory, dict) else memory!r}")
    parts = memory.get("parts") if isinstance(memory, dict) else None
    if parts is not None and not (isinstance(parts, dict) and all(
            isinstance(k, int) and k > 0 and isinstance(v, (int, float)) and v > 0 for k, v in parts.items())):
        problems.append(f"pann.memory_gib.parts: expected the base GiB by the diagonals of a part (positive "
                        f"integers), got {parts!r}")
    table = memory.get("bootstrapper") if isinstance(memory, dict) else None
    if data.get("boot_params") is not None and not (
            isinstance(table, dict) and table and all(isinstance(k, int) and 0 < k < ckks.get("LogN", 0)
                                                      and isinstance(v, (int, float)) and v > 0
                                                      for k, v in table.items())):
        problems.append(f"pann.memory_gib.bootstrapper: expected the GiB of one bootstrapper by log2 of its "
                        f"slots (positive integers below LogN), got {table!r}")
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
# encryption?"); about 1 GiB in a network's estimated peak (bootstrap-128's base: "the Python side (about 1 GiB after
# malloc_trim)").
PYTHON_SIDE_GIB = 4.0
PYTHON_SIDE_ESTIMATED_GIB = 1.0


def go_memory_limit(available_gib: float, estimated_gib: float | None = None,
                    python_side_gib: float = PYTHON_SIDE_GIB) -> str:
    """``GOMEMLIMIT`` for Lattigo's Go runtime, in whole GiB (at least 1): Go's share of an estimated peak
    (``estimated_gib`` less the 1 GiB of the Python side it counts, rounded up), and never more than what is
    available less ``python_side_gib``.

    Near this soft limit Go collects and returns freed memory to the system at once: with 14 GiB the encrypted
    ResNet-20 in batches of 4 peaked at 14.9 GiB; with no limit in effect its Go heap grew to 21.7 GiB and it was
    killed (docs/results.md, "Go's heap limited by the parameters' estimate"). The variable must be in the
    environment the process starts with (:func:`pann.fhe.cli.restart_with_go_settings`)."""
    limit = available_gib - python_side_gib
    if estimated_gib is not None:
        limit = min(limit, math.ceil(estimated_gib - PYTHON_SIDE_ESTIMATED_GIB))
    return f"{max(1, math.floor(limit))}GiB"


class InsufficientMemory(ValueError):
    """The network's memory estimate under a preset exceeds what this machine has available."""


def check_resources(params: Params, depth: int, available_gib: float, slots: int) -> tuple[bool, float]:
    """``(bootstrapping, estimated GiB)`` for a network of multiplicative ``depth`` whose largest tensor holds
    ``slots`` values (what a bootstrapper must take, :meth:`Params.estimated_memory_gib`).

    Raises ``ValueError`` when the network needs more levels than a preset without
    bootstrapping has, and :class:`InsufficientMemory` when the estimate exceeds ``available_gib``.
    """
    bootstrapping = depth > params.levels
    if bootstrapping and not params.bootstraps:
        raise ValueError(f"the network needs {depth} levels but FHE parameters {params.name} have "
                         f"{params.levels} and no bootstrapping; use a preset with boot_params "
                         f"(e.g. bootstrap-128)")
    bootstrapped = slots if bootstrapping else None
    need = params.estimated_memory_gib(bootstrapped)
    if need > available_gib:
        parts, hint = params.memory_gib.get("parts"), ""
        if parts and not params.diagonals_per_transform:  # what the measured smallest parts would need
            split = dataclasses.replace(params, diagonals_per_transform=min(parts))
            hint = (f", run the linear layers in parts (--diagonals-per-transform {min(parts)}: about "
                    f"{split.estimated_memory_gib(bootstrapped):.1f} GiB)")
        raise InsufficientMemory(
            f"this network under FHE parameters {params.name} needs about {need:.1f} GiB "
            f"({f'bootstrapping 2^{params.log_slots(slots)} slots' if bootstrapping else 'without bootstrapping'}) "
            f"but this machine has {available_gib:.1f} GiB available; free memory{hint}, or use a smaller preset or "
            "network")
    return bootstrapping, need
