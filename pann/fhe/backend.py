"""A PANN under real CKKS encryption, with Orion (``orion-fhe==1.0.2``) as the back end.

>>> report = check(pann, images, "leveled-128")    # report.results: one ImageResult per image
>>> network = build_network(lower(pann, images))   # the Orion network itself, in cleartext mode

The only module that imports the FHE library, lazily: ``import pann`` never needs it. Each PANN
ReLU keeps its ``B`` and Chebyshev stages (:func:`pann.fhe.graph.folded_stages`), not Orion's fit.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import gc
import importlib.metadata
import io
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import fx, nn

from pann.fhe.graph import Plan, UnsupportedLayerError, fold_prescales, largest_tensor, lower, plan_depth
from pann.fhe.patches import (ORIGINALS, before_first_transform, block_parts, check_signatures,
                               single_bootstrapper, sparse_diagonalize, split_transforms)
from pann.fhe.reference import ImageResult, compare, plaintext, seconds_by_kind
from pann.fhe.params import Params, available_memory_gib, check_resources, load_params
from pann.fhe.progress import CompileLines, Progress, images_left
from pann.fhe.workdir import FolderSize, folder_gb, folder_size, refuse_unless_room, work_folder
from pann.fhe import layers as fhe_layers
__all__ = ["CheckReport", "FheUnavailable", "ImageResult", "Progress", "UnsupportedLayerError", "build_network", "check",
           "dry_run", "orion_modules"]

logger = logging.getLogger(__name__)

ORION_VERSION = "1.0.2"
INSTALL_HINT = "the FHE back end is not installed: pip install 'pann[fhe]'"


class FheUnavailable(ImportError):
    """``orion-fhe`` is missing, or not the pinned version."""


def orion_modules():
    """``(orion, orion.nn)`` of the pinned version, with :mod:`pann.fhe.patches`' sparse diagonalization in place
    (Orion's own densifies every block); :class:`FheUnavailable` (with the install hint) otherwise."""
    try:
        version = importlib.metadata.version("orion-fhe")
        import orion
        import orion.nn as on
    except ImportError as exc:  # PackageNotFoundError is an ImportError
        raise FheUnavailable(INSTALL_HINT) from exc
    if version != ORION_VERSION:
        raise FheUnavailable(f"orion-fhe {version} is installed; pann supports {ORION_VERSION} only: "
                             "pip install 'pann[fhe]'")
    _install_patches()
    return orion, on


class _LogWriter(io.TextIOBase):
    """Orion prints its progress; this turns those lines into debug log records (and hands them to ``lines``)."""

    def __init__(self, lines: Callable[[str], None] | None = None):
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        for line in text.strip().splitlines():
            logger.debug("orion: %s", line)
            if self.lines is not None:
                self.lines(line)
        return len(text)


def _quiet(lines: Callable[[str], None] | None = None):
    return contextlib.redirect_stdout(_LogWriter(lines))


def build_network(plan: Plan) -> nn.Module:
    """The Orion network of a lowered PANN (:func:`pann.fhe.graph.lower`), in cleartext mode."""
    _, on = orion_modules()
    return fhe_layers.network(on, plan)


@functools.cache
def _install_patches() -> None:
    """Swap in :mod:`pann.fhe.patches`' sparse diagonalization (the bootstrapper and the linear-transform evaluator
    are swapped per scheme)."""
    from orion.backend.python import bootstrapper, lt_evaluator
    from orion.core import packing

    transforms = lt_evaluator.NewEvaluator
    originals = {"orion.core.packing.diagonalize": packing.diagonalize,
                 "orion.backend.python.bootstrapper.NewEvaluator.generate_bootstrapper":
                     bootstrapper.NewEvaluator.generate_bootstrapper,
                 "orion.backend.python.bootstrapper.NewEvaluator.bootstrap": bootstrapper.NewEvaluator.bootstrap,
                 **{f"orion.backend.python.lt_evaluator.NewEvaluator.{name}": getattr(transforms, name)
                    for name in ("generate_transforms", "evaluate_transforms", "delete_transforms")}}
    check_signatures(originals)
    ORIGINALS.update(originals)
    packing.diagonalize = sparse_diagonalize


def _compile(network: nn.Module, params: Params, calibration: torch.Tensor, folder: Path, lines=None):
    """Init the scheme, fit ranges on ``calibration``, compile: ``(scheme, input level, work folder size)``. Where
    keys and diagonals go to ``folder`` (``io_mode: save``), its size is estimated once Orion has placed the
    bootstraps, and the compilation refused then (:class:`~pann.fhe.workdir.InsufficientDisk`) if the disk cannot
    hold it; otherwise the size is ``None``."""
    orion, _ = orion_modules()
    from orion.backend.python.bootstrapper import NewEvaluator
    from orion.backend.python.lt_evaluator import NewEvaluator as TransformEvaluator
    from orion.backend.python.tensors import CipherTensor

    config = copy.deepcopy(params.orion)
    config.setdefault("orion", {}).update(diags_path=str(folder / "diagonals.h5"), keys_path=str(folder / "keys.h5"))
    sizes: list[FolderSize] = []

    def size_the_folder() -> None:
        ckks = params.orion["ckks_params"]
        sizes.append(folder_size(_transforms(network, params.diagonals_per_transform), params.log_n,
                                 len(ckks["LogQ"]), len(ckks["LogP"]), encoded=not params.encode_when_loaded))
        refuse_unless_room(sizes[0], folder)

    with _quiet(lines):
        scheme = orion.init_scheme(config)
        scheme.bootstrapper = single_bootstrapper(NewEvaluator)(scheme)
        evaluator = TransformEvaluator
        if params.diagonals_per_transform:
            evaluator = split_transforms(evaluator, CipherTensor, params.diagonals_per_transform,
                                         params.encode_when_loaded)
        if params.saves_to_disk:
            evaluator = before_first_transform(evaluator, size_the_folder)
        if evaluator is not TransformEvaluator:
            scheme.lt_evaluator = evaluator(scheme)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(calibration.float()), batch_size=1)
        network.eval()
        with torch.no_grad():  # orion.fit runs with autograd on and would keep the whole graph
            orion.fit(network, loader, batch_size=64)
            _fused_ranges(network)
            input_level = orion.compile(network)
        for module in network.modules():  # the back end holds the transforms now
            if hasattr(module, "diagonals"):
                module.diagonals = {}
        # What compilation freed on the Python side (3 GiB for ResNet-20) goes back before the bootstrapper's 12 GiB
        # come: trimmed after it, the two met at the run's peak.
        _return_freed_memory()
        scheme.bootstrapper.build()
    if params.diagonals_per_transform:
        logger.info("the linear layers' %d blocks in %d transforms of at most %d diagonals",
                    scheme.lt_evaluator.blocks, scheme.lt_evaluator.transforms, params.diagonals_per_transform)
    return scheme, input_level, (sizes[0] if sizes else None)


def _transforms(network: nn.Module, diagonals_per_transform: int | None):
    """``(level, diagonals, log2 of the baby-step giant-step ratio)`` of every Lattigo transform the compiled network's
    linear layers make: one per block, or per part of a block (:func:`pann.fhe.patches.split_transforms`). The ratio's
    logarithm as Orion's Go side takes it: ``int(ln(float32 ratio))``."""
    from orion.nn.linear import LinearTransform
    import numpy as np

    for module in network.modules():
        if isinstance(module, LinearTransform):
            log_ratio = int(math.log(float(np.float32(module.bsgs_ratio))))
            for block in module.diagonals.values():
                for part in block_parts(block, diagonals_per_transform):
                    yield module.level, part, log_ratio


def _fused_pairs(network: nn.Module) -> dict[str, str]:
    """``{layer: batch norm}``: each convolution or linear layer that a batch norm reads, which Orion fuses."""
    return {inputs[0]: name for name, inputs in network.steps
            if type(network.layers[name]).__name__.startswith("BatchNorm") and len(inputs) == 1
            and inputs[0] in network.layers and type(network.layers[inputs[0]]).__name__ in ("Conv2d", "Linear")}


def _fused_ranges(network: nn.Module) -> None:
    """Give each convolution or linear layer that a batch norm follows the batch norm's fitted output range.

    Orion fuses the batch norm into the layer before it, and a bootstrap placed after the fused layer scales its
    input by that layer's own fitted range: the range of its output *before* the batch norm. Where the batch norm
    widens it (as one carrying a ReLU's ``1/B``, :func:`pann.fhe.graph.fold_prescales`, can) the bootstrap's input
    leaves its interval and the ciphertext is lost (measured: the folded ResNet-20's logits off by 2e6 without
    this, 9.5e-5 with it; docs/measurements/fhe_pair/)."""
    for before, batchnorm in _fused_pairs(network).items():
        bn = network.layers[batchnorm]
        network.layers[before].output_min, network.layers[before].output_max = bn.output_min, bn.output_max


def _return_freed_memory() -> None:
    """Give the memory compilation freed on the Python side back to the system: ask glibc's allocator to return
    its free pages (``malloc_trim``), which it otherwise keeps for later allocations. (No ``gc.collect()`` here: it
    would finalize an earlier check's Orion objects, which delete their ciphertexts by id in this scheme.)"""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found: one :class:`ImageResult` per image, the compilation's seconds (keys,
    diagonals, bootstrapper), the network's depth and the level its input is encrypted at."""

    params: str
    secure: bool
    depth: int
    bootstrapping: bool
    estimated_gib: float
    input_level: int
    compile_seconds: float
    results: list[ImageResult]
    prescales_kept: int = 0  # ReLUs whose 1/B could not be folded into the layer before (after a residual add)
    batch: int = 1  # images run beside each other, layer by layer
    # Keys and diagonals on disk (io_mode: save): the work folder's GB once compiled (its largest), the estimate
    # the check made before the first key, and the rotation keys and diagonals it counted; None without a folder.
    work_folder: dict | None = None

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "results"},
                "results": [r.to_dict() for r in self.results]}


def encrypted_plan(pann: fx.GraphModule, example: torch.Tensor) -> tuple[Plan, list[str]]:
    """The plan :func:`check` runs: ``pann`` lowered, every ReLU's ``1/B`` folded into the layer before where that
    is exact (:func:`pann.fhe.graph.fold_prescales`); and the ReLUs that kept theirs."""
    plan, kept = fold_prescales(lower(pann, example[:1]))
    relus = sum(layer.kind == "relu" for layer in plan.layers)
    logger.info("1/B folded into the layer before in %d of %d ReLUs%s", relus - len(kept), relus,
                f"; kept (input not a linear layer's alone, e.g. after a residual add): {', '.join(kept)}"
                if kept else "")
    return plan, kept


def check(pann: fx.GraphModule, images: torch.Tensor, params: str | Path | dict | Params = "leveled-128",
          calibration: torch.Tensor | None = None, workdir: str | Path | None = None,
          progress: Callable[[Progress], None] | None = None, trace: bool = False, batch: int = 4) -> CheckReport:
    """Encrypt each image, run the PANN under CKKS, decrypt, and compare with the plaintext PANN.

    ``images`` are the PANN's inputs ``(N, C, H, W)``; ``calibration`` (default: ``images``)
    sets the ranges Orion scales bootstrap inputs by. Keys and matrix diagonals go to a
    work folder under ``workdir`` where the preset says ``io_mode: save`` (:mod:`pann.fhe.workdir`: removed after
    the check, and by the next check when this one dies). ``progress``, if
    given, receives a :class:`~pann.fhe.progress.Progress` at each compile phase and after each
    layer of each image. ``trace`` also decrypts every layer's output and compares it with the Orion network run
    in the clear (:attr:`ImageResult.trace`; a layer into which Orion fuses a batch norm, with the batch norm's
    output): where a run that disagrees went wrong. ``batch`` images run beside each other, layer by layer (with
    ``trace``, one at a time): with the linear layers in parts (``diagonals_per_transform``) each part's keys and
    diagonals are loaded once for all of them, and each image is given an equal share of that layer's time; the
    ciphertexts of the images beside it are all the memory it costs. Raises :class:`UnsupportedLayerError` for layers with no encrypted form,
    ``ValueError`` for bad parameters or when the memory estimate exceeds this machine's
    available memory (before any key is made), and :class:`~pann.fhe.workdir.InsufficientDisk` (an ``OSError``) when
    the work folder's keys and diagonals would not fit on its disk (once Orion has placed the bootstraps, before the
    first key: :func:`pann.fhe.workdir.folder_size`; the report's ``work_folder`` has that estimate and the size).
    """
    params = params if isinstance(params, Params) else load_params(params)
    if batch < 1:
        raise ValueError(f"batch: expected at least 1 image, got {batch}")
    problems = params.problems()
    if problems:
        raise ValueError(f"FHE parameters {params.name}: " + "; ".join(problems))
    orion, _ = orion_modules()
    plan, kept = encrypted_plan(pann, images)
    depth = plan_depth(plan)
    bootstrapping, need = check_resources(params, depth, available_memory_gib(), largest_tensor(plan))
    if not params.secure:
        logger.warning("FHE parameters %s are INSECURE: for tests only", params.name)
    logger.info("%d layers, depth %d levels (%d per bootstrap): %s; parameters %s, about %.1f GiB",
                len(plan.layers), depth, params.levels, "bootstrapping" if bootstrapping else "leveled",
                params.name, need)
    logits, inputs = plaintext(pann, images, plan.input)
    calibration_inputs = inputs if calibration is None else plaintext(pann, calibration, plan.input)[1]
    network = build_network(plan)
    clear = _clear_values(network, inputs) if trace else None  # before compilation fuses the layers
    start = time.perf_counter()
    clock = lambda: time.perf_counter() - start  # noqa: E731
    lines = CompileLines(progress, clock) if progress else None
    try:
        with work_folder(workdir) as folder:
            scheme, input_level, size = _compile(network, params, calibration_inputs, folder, lines)
            compile_seconds = clock()
            logger.info("compiled in %.1f s; input at level %d", compile_seconds, input_level)
            disk = None if size is None else {"estimated_gb": round(size.gb, 4), "gb": round(folder_gb(folder), 4),
                                              "rotation_keys": size.keys, "diagonals": size.diagonals}
            if disk:
                logger.info("the work folder holds %.1f GB (estimated before the first key: %.1f GB)", disk["gb"],
                            disk["estimated_gb"])
            results: list[ImageResult] = []
            kinds = {layer.name: layer.kind for layer in plan.layers}
            fused = _fused_pairs(network) if trace else {}
            transforms = scheme.lt_evaluator if params.diagonals_per_transform else None
            batch = 1 if trace else min(batch, len(images))
            for first in range(0, len(images), batch):
                indices = list(range(first, min(first + batch, len(images))))
                watches = [_Watch(progress if i == indices[-1] else None, clock, scheme.bootstrapper, i, len(images),
                                  results, kinds, transforms, len(indices)) for i in indices]
                tracers = [_Trace(clear[i], fused, scheme.bootstrapper) for i in indices] if trace else None
                results.extend(_run_batch(orion, network, inputs, logits, indices, input_level, depth, watches, tracers,
                                          _together(transforms, watches)))
                for r in results[first:]:
                    logger.info("image %d/%d: encrypted class %d, plaintext class %d, max logit error %.3g, "
                                "%d bootstraps, %.1f s (%s)", r.index + 1, len(images), r.encrypted_class,
                                r.plaintext_class, r.max_logit_error, r.bootstraps, r.seconds,
                                ", ".join(f"{kind} {s:.1f} s" for kind, s in seconds_by_kind(r.layers).items()))
                    if transforms is not None:
                        logger.info("image %d/%d: its linear layers spent %.1f s loading %.0f rotation keys and %.1f s "
                                    "loading diagonals%s", r.index + 1, len(images),
                                    *(sum(row[key] for row in r.layers) for key in ("key_seconds", "keys_loaded")),
                                    sum(row["diagonal_seconds"] for row in r.layers),
                                    f" (its share of {len(indices)} images')" if len(indices) > 1 else "")
            if params.diagonals_per_transform:
                logger.info("%d rotation keys loaded for %d image(s)", scheme.lt_evaluator.loads, len(images))
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the frames it passed through let go of Orion's objects
        raise
    finally:
        # Orion's modules hold ciphertext and plaintext ids in reference cycles, deleted by id when collected:
        # collect them while their scheme lives, not later inside another check's scheme (whose ids they share;
        # measured: a check refused half way through its compilation aborted the next one in the process).
        network = scheme = None
        gc.collect()
        orion.delete_scheme()
    return CheckReport(params.name, params.secure, depth, bootstrapping, need, input_level, compile_seconds, results,
                       len(kept), batch, disk)


def dry_run(pann: fx.GraphModule, images: torch.Tensor, params: str | Path | dict | Params = "leveled-128") -> dict:
    """Everything :func:`check` decides before encrypting, and no keys: the layer count, the
    depth, whether it bootstraps under ``params``, the memory estimate, and the largest logit
    difference between the built Orion network run in the clear and the float64 PANN."""
    params = params if isinstance(params, Params) else load_params(params)
    plan, kept = encrypted_plan(pann, images)
    depth = plan_depth(plan)
    logits, inputs = plaintext(pann, images, plan.input)
    with torch.no_grad():
        clear = build_network(plan)(inputs.float()).double()
    bootstrapping = depth > params.levels
    slots = largest_tensor(plan)
    return {"layers": len(plan.layers), "relus": sum(layer.kind == "relu" for layer in plan.layers),
            "prescales_kept": len(kept),
            "depth": depth, "levels_per_bootstrap": params.levels, "bootstrapping": bootstrapping,
            "bootstrapped_log_slots": params.log_slots(slots) if bootstrapping else None,
            "estimated_gib": params.estimated_memory_gib(slots if bootstrapping else None), "images": len(images),
            "clear_max_logit_error": float((clear - logits).abs().max())}


class _Watch:
    """Times each layer one image runs (from :meth:`begin` to the call after it: its own seconds, and the
    bootstraps it ended with, apart: :attr:`rows`), counts its bootstraps, and reports each layer to ``progress``
    (if any) for the ``batch`` images it ends. With ``transforms`` (the linear layers split into parts,
    :func:`pann.fhe.patches.split_transforms`) a row also says how many of its own seconds went to loading rotation
    keys and diagonals, and how many keys it loaded. ``shared``, while set (by :func:`_together`), is this image's
    share of the work its layer did for every image of the batch at once, added to its row."""

    def __init__(self, progress, clock, bootstrapper, index: int, images: int, done: list[ImageResult],
                 kinds: dict[str, str], transforms=None, batch: int = 1):
        self.progress, self.clock, self.bootstrapper, self.transforms = progress, clock, bootstrapper, transforms
        self.index, self.images, self.done, self.kinds, self.batch = index, images, done, kinds, batch
        self.rows: list[dict] = []
        self.bootstraps, self.seconds, self.shared = 0, 0.0, None
        self.begin()

    def begin(self) -> None:
        """The next layer's time counts from here."""
        self.last = self.counters()

    def counters(self) -> tuple:
        """(time, bootstraps, bootstrap seconds[, key seconds, diagonal seconds, keys loaded]) so far."""
        loading = (() if self.transforms is None else
                   (self.transforms.key_seconds, self.transforms.diagonal_seconds, self.transforms.loads))
        return (time.perf_counter(), self.bootstrapper.count, self.bootstrapper.seconds, *loading)

    def __call__(self, step: int, steps: int, layer: str, value=None) -> None:
        spent = [now - last for now, last in zip(self.counters(), self.last)]
        if self.shared is not None:
            spent = [own + share for own, share in zip(spent, self.shared)]
        seconds, bootstraps, boot_seconds = spent[0], int(spent[1]), spent[2]
        row = {"layer": layer, "kind": self.kinds.get(layer, "other"),
               "level": int(value.level()) if hasattr(value, "level") else None,
               "seconds": round(seconds - boot_seconds, 3), "bootstraps": bootstraps,
               "bootstrap_seconds": round(boot_seconds, 3)}
        if self.transforms is not None:
            keys_loaded = spent[5] if self.batch > 1 else int(spent[5])  # a share of a batch's: a fraction
            row.update(key_seconds=round(spent[3], 3), diagonal_seconds=round(spent[4], 3),
                       keys_loaded=round(keys_loaded, 2))
        self.rows.append(row)
        self.bootstraps += bootstraps
        self.seconds += seconds
        if self.progress is not None:
            left = images_left([r.seconds for r in self.done], self.images, step / steps, self.batch)
            self.progress(Progress("image", step, steps, layer, self.clock(), self.index - self.batch + 2,
                                   self.images, self.bootstraps, left, self.batch))


def _together(transforms, watches: list[_Watch]):
    """``together(module, inputs)`` for :meth:`Network.run`: a linear layer's transforms on every image of the batch
    at once (:meth:`SplitTransforms.together`), each image's watch given an equal share of what that took; other
    layers, or without ``transforms``, nothing."""

    @contextlib.contextmanager
    def together(module, inputs):
        if transforms is None or len(inputs) < 2 or not hasattr(module, "transform_ids"):
            yield
            return
        before = watches[0].counters()
        with transforms.together(module, inputs):
            share = [(now - last) / len(inputs) for now, last in zip(watches[0].counters(), before)]
            for watch in watches:
                watch.shared = share
            try:
                yield
            finally:
                for watch in watches:
                    watch.shared = None

    return together


def _clear_values(network: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Each layer's output for each image: the Orion network run in the clear."""
    values = []
    with torch.no_grad():
        for i in range(len(inputs)):
            record: dict[str, torch.Tensor] = {}
            network.on_value = lambda name, value: record.__setitem__(name, value.detach().double().clone())
            network(inputs[i:i + 1].float())
            values.append(record)
    network.on_value = None
    return values


class _Trace:
    """Decrypts each layer's output of one encrypted image and compares it with the clear run's (a layer into which
    Orion fused a batch norm, with the batch norm's): one row per layer."""

    def __init__(self, clear: dict[str, torch.Tensor], fused: dict[str, str], bootstrapper):
        self.clear, self.fused, self.bootstrapper, self.first = clear, fused, bootstrapper, bootstrapper.count
        self.rows: list[dict] = []

    def __call__(self, name: str, value) -> None:
        clear = self.clear[self.fused.get(name, name)]
        decrypted = value.decrypt().decode().double()
        reference = _multiplexed(clear, decrypted.shape)
        error = None if reference is None else float((decrypted - reference).abs().max())
        self.rows.append({"layer": name, "level": int(value.level()), "bootstraps": self.bootstrapper.count - self.first,
                          "max_abs": float(clear.abs().max()), "max_error": error})


def _multiplexed(clear: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``clear`` laid out as Orion decodes it: after a strided convolution its packing is multiplexed (channels
    zero-padded to a multiple of ``gap^2``, then ``pixel_shuffle`` by ``gap``, as ``orion.core.packing.multiplex``);
    ``None`` where the shapes do not correspond (such a layer is listed, not compared)."""
    if clear.shape == shape:
        return clear
    if clear.dim() != 4 or len(shape) != 4 or shape[-1] % clear.shape[-1] or shape[-1] == clear.shape[-1]:
        return None
    gap = shape[-1] // clear.shape[-1]
    n, c, h, w = clear.shape
    padded = torch.zeros(n, -(-c // gap ** 2) * gap ** 2, h, w, dtype=clear.dtype)
    padded[:, :c] = clear
    shuffled = torch.nn.functional.pixel_shuffle(padded, gap)
    return shuffled if shuffled.shape == shape else None


def _run_batch(orion, network, inputs, logits, indices: list[int], input_level, depth, watches: list[_Watch],
               tracers: list[_Trace] | None, together) -> list[ImageResult]:
    """Images ``indices`` of ``inputs`` encrypted, run beside each other layer by layer, decrypted, compared with
    their ``logits``; each image's seconds are its own encryption and decryption and its layers' rows."""
    ciphertexts, own = [], []
    with _quiet():
        for i in indices:
            start = time.perf_counter()
            ciphertexts.append(orion.encrypt(orion.encode(inputs[i:i + 1].float(), input_level)))
            own.append(time.perf_counter() - start)
        network.he()
        try:
            outputs = network.run(ciphertexts, watches, tracers, together)
            del ciphertexts
            decrypted = []
            for k, out in enumerate(outputs):
                start = time.perf_counter()
                decrypted.append(out.decrypt().decode())
                own[k] += time.perf_counter() - start
        finally:
            network.eval()
    return [compare(i, decrypted[k], logits[i], depth, watches[k].bootstraps, own[k] + watches[k].seconds,
                    tuple(tracers[k].rows) if tracers else (), tuple(watches[k].rows))
            for k, i in enumerate(indices)]
