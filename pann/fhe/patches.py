"""Replacements for three internals of orion-fhe 1.0.2 that do not fit a 24 GB machine.

:mod:`pann.fhe.backend` installs them (it alone imports the library and hands its pieces in here):

1. ``orion.core.packing.diagonalize`` densifies every ``slots x slots`` block of a weight
   matrix (float64, float32 and a gathered copy: about 17 GB for one block at LogN 16).
   :func:`sparse_diagonalize` reads the same diagonals from the sparse nonzeros.
2. ``orion.backend.python.bootstrapper.NewEvaluator`` builds one bootstrapper per tensor
   size, 9-13 GiB each at LogN 16. :func:`single_bootstrapper` builds one, for the largest
   size requested, and bootstraps every tensor with it (Orion's bootstrap prescale zeroes
   the unused slots).
3. ``orion.backend.python.lt_evaluator.NewEvaluator`` makes one Lattigo linear transform per
   ``slots x slots`` block of a layer, whose diagonals and rotation keys are all in memory while it
   runs (about 6 GiB for a 64-channel convolution of ResNet-20 at LogN 16, on top of the
   bootstrapper). :func:`split_transforms` makes one per part of at most ``n`` diagonals of a block
   and adds the parts' outputs: the same sum, a part's diagonals and keys in memory at a time.

:func:`before_first_transform` adds a hook (it replaces nothing): the moment at which Orion has placed every
bootstrap and not yet made a key, where :mod:`pann.fhe.backend` sizes the work folder.

All are pinned to the signatures in :data:`PATCHED`; :func:`check_signatures` refuses
another version of the library rather than patching it blindly.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

ORIGINALS: dict = {}  # the library's own functions, by the names of PATCHED, once replaced

PATCHED = {
    "orion.core.packing.diagonalize": ["matrix", "num_slots", "embed_method", "is_last_layer"],
    "orion.backend.python.bootstrapper.NewEvaluator.generate_bootstrapper": ["self", "slots"],
    "orion.backend.python.bootstrapper.NewEvaluator.bootstrap": ["self", "ctxt", "slots"],
    "orion.backend.python.lt_evaluator.NewEvaluator.generate_transforms": ["self", "linear_layer"],
    "orion.backend.python.lt_evaluator.NewEvaluator.evaluate_transforms": ["self", "linear_layer", "in_ctensor"],
    "orion.backend.python.lt_evaluator.NewEvaluator.delete_transforms": ["self", "transform_ids"],
}


def check_signatures(functions: dict) -> None:
    """``RuntimeError`` unless each function of ``functions`` (by the names of :data:`PATCHED`)
    takes exactly the parameters that the replacement was written for."""
    for name, expected in PATCHED.items():
        found = list(inspect.signature(functions[name]).parameters)
        if found != expected:
            raise RuntimeError(f"{name} takes ({', '.join(found)}), not ({', '.join(expected)}): "
                               "this orion-fhe is not the version pann's patches were written for")


def sparse_diagonalize(matrix, num_slots: int, embed_method: str, is_last_layer: bool):
    """Orion's ``diagonalize`` without dense blocks: ``({(block_row, block_col): {i: diagonal}},
    output_rotations)`` with the same values, float32 as there.

    Block ``(R, C)`` of height ``h`` (``slots``, or the next power of two above the matrix
    height for a single "hybrid" block row) has diagonal ``i`` at position ``j`` equal to
    ``M[j mod h, (i + j) mod slots]`` of the block. An entry at ``(r, c)`` of the block thus
    lands on diagonal ``d mod h`` at position ``r + h floor(d / h)``, ``d = (c - r) mod slots``:
    exactly one place, so the nonzeros alone give every diagonal.
    """
    height, width = matrix.shape
    block_rows, block_cols = math.ceil(height / num_slots), math.ceil(width / num_slots)
    if block_rows == 1 and embed_method == "hybrid" and not is_last_layer:
        block_height = 2 ** math.ceil(math.log2(height))
        output_rotations = int(math.log2(num_slots // block_height))
    else:
        block_height, output_rotations = num_slots, 0
    coo = matrix.tocoo()
    values = coo.data.astype(np.float32)
    keep = values != 0
    rows, cols, values = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), values[keep]
    r, c = rows % num_slots, cols % num_slots
    d = (c - r) % num_slots
    diagonal, position = d % block_height, r + block_height * (d // block_height)
    entries = defaultdict(list)
    for index, key in enumerate(zip((rows // num_slots).tolist(), (cols // num_slots).tolist(),
                                    diagonal.tolist())):
        entries[key].append(index)
    blocks = {(R, C): {} for R in range(block_rows) for C in range(block_cols)}
    for (R, C, i) in sorted(entries):
        index = np.asarray(entries[(R, C, i)])
        vector = np.zeros(num_slots, dtype=np.float32)
        vector[position[index]] = values[index]
        blocks[(R, C)][i] = vector.tolist()
    total = sum(len(b) for b in blocks.values())
    logger.debug("diagonalized %s matrix: %d blocks, %d diagonals", matrix.shape, len(blocks), total)
    return {key: diags or {0: [0.0] * num_slots} for key, diags in blocks.items()}, output_rotations


def single_bootstrapper(base: type) -> type:
    """A subclass of Orion's bootstrap evaluator ``base`` that keeps one bootstrapper.

    ``generate_bootstrapper`` only records the slot count; :meth:`build` (called once the
    network is compiled, or at the first bootstrap) makes one for the largest. ``count`` is
    the number of ciphertexts bootstrapped so far, ``seconds`` the wall time they took.
    """

    class SingleBootstrapper(base):
        def __init__(self, scheme):
            super().__init__(scheme)
            self.requested, self.slots, self.count, self.seconds = 0, None, 0, 0.0

        def generate_bootstrapper(self, slots):
            self.requested = max(self.requested, int(slots))

        def build(self):
            if self.requested and self.slots is None:
                self.slots = self.requested
                logger.info("building one bootstrapper for 2^%d slots", int(math.log2(self.slots)))
                base.generate_bootstrapper(self, self.slots)

        def bootstrap(self, ctxt, slots):
            self.build()
            self.count += 1
            start = time.perf_counter()
            try:
                return base.bootstrap(self, ctxt, self.slots)
            finally:
                self.seconds += time.perf_counter() - start

    return SingleBootstrapper


def before_first_transform(base: type, hook: Callable[[], None]) -> type:
    """A subclass of Orion's linear-transform evaluator ``base`` that calls ``hook()`` once, before it generates its
    first transform: when ``orion.compile`` has diagonalized every linear layer and placed every bootstrap (each
    layer has its ``level``), and no rotation key or diagonal is made yet. What ``hook`` raises ends the
    compilation there."""

    class BeforeFirstTransform(base):
        hooked = False

        def generate_transforms(self, linear_layer):
            if not self.hooked:
                self.hooked = True
                hook()
            return super().generate_transforms(linear_layer)

    return BeforeFirstTransform


def hold_keys(held: set[int], needed: set[int]) -> tuple[set[int], set[int]]:
    """``(held after, to load)`` for a part that needs the rotation keys ``needed`` while ``held`` are loaded: the
    needed ones beside those held as long as that makes at most twice what the part needs, else the needed ones alone
    (the held ones dropped first)."""
    kept = held if len(held | needed) <= 2 * len(needed) else set()
    return kept | needed, needed - kept


def block_parts(block, diagonals: int | None) -> list[list[int]]:
    """A block's diagonal indices, sorted, in runs of at most ``diagonals`` (``None``: one run): the parts
    :func:`split_transforms` makes a transform of."""
    indices = sorted(block)
    step = diagonals or len(indices) or 1
    return [indices[start:start + step] for start in range(0, len(indices), step)]


def split_transforms(base: type, tensor: type, diagonals: int, encode_when_loaded: bool = False) -> type:
    """A subclass of Orion's linear-transform evaluator ``base`` that splits each block into transforms of at most
    ``diagonals`` diagonals (``tensor``: Orion's ``CipherTensor``).

    A block computes ``y = sum_i d_i * rot_i(x)`` over its diagonals ``d_i``; the parts compute that sum over
    disjoint runs of ``i`` (each by Lattigo's baby-step giant-step evaluation of its own diagonals), and their
    outputs are added before the one rescale Orion applies to a row of blocks, so the result is the block's up to
    the rounding of the additions. With keys and diagonals on disk (``io_mode: save``) one part's diagonals are loaded
    at a time, and the rotation keys it needs beside those loaded for the parts before, as long as that makes at most
    twice what it needs (else those are dropped first): a part needs fewer keys than its block, and consecutive
    parts share some (the baby steps), so smaller parts trade time (more keys loaded) for memory. ``transform_ids``
    of a layer maps each block to the list of its parts' ids; a part's diagonals are saved as block
    ``"{row}_{col}_{part}"``. ``blocks``, ``transforms`` and ``loads`` count the blocks and transforms generated and
    the rotation keys loaded; ``key_seconds`` and ``diagonal_seconds`` add up the time spent loading rotation keys and
    diagonals from disk while transforms are evaluated (the rest of a linear layer's time is computing).
    ``together(layer, inputs)`` evaluates one layer on several ciphertexts (several images) at once, so each part's
    keys and diagonals are loaded once for all of them.

    With ``encode_when_loaded`` (and keys on disk) no encoded diagonal is saved: a part's transform is made at
    compilation only to learn (and save) its rotation keys, then deleted; when the layer runs, the part's diagonal
    values are read from the copies Orion saves of every layer (``{layer}/diagonals/{row}_{col}/{index}``, ``N / 2``
    floats each) and encoded into a new transform, which is deleted after its evaluation. An encoded diagonal at level
    ``l`` takes ``(l + 1 + |P|) N`` words and its values ``N / 2``: the folder keeps the keys and a tenth or less of
    the rest, at the price of encoding each diagonal when it is loaded. ``transform_ids`` then lists each block's
    parts by their index in ``parts``; ``diagonal_seconds`` counts reading and encoding.
    """

    class SplitTransforms(base):
        def __init__(self, scheme):
            super().__init__(scheme)
            self.held: set[int] = set()  # the rotation keys loaded now
            self.blocks = self.transforms = self.loads = 0
            self.key_seconds = self.diagonal_seconds = 0.0
            self.results = {}  # id of an input tensor -> the layer's transforms of it, inside together()
            self.parts: list[tuple] = []  # with encode_when_loaded: (layer, row, col, diagonals, level, ratio, keys)

        def generate_transforms(self, linear_layer):
            transform_ids = {}
            for (row, col), block in linear_layer.diagonals.items():
                transform_ids[(row, col)] = []
                self.blocks += 1
                for part, chosen in enumerate(block_parts(block, diagonals)):
                    self.transforms += 1
                    if encode_when_loaded:  # a transform without its diagonals (Orion's "load" mode): its keys
                        transform_id = self._transform(chosen, None, linear_layer.level, linear_layer.bsgs_ratio)
                        self.generate_rotation_keys(transform_id)
                        self.parts.append((linear_layer.name, row, col, chosen, linear_layer.level,
                                           linear_layer.bsgs_ratio, set(self.get_required_rotation_keys(transform_id))))
                        self.backend.DeleteLinearTransform(transform_id)
                        transform_ids[(row, col)].append(len(self.parts) - 1)
                        continue
                    data = [value for index in chosen for value in block[index]]
                    transform_id = self.backend.GenerateLinearTransform(
                        chosen, data, linear_layer.level, linear_layer.bsgs_ratio, self.io_mode)
                    transform_ids[(row, col)].append(transform_id)
                    self.generate_rotation_keys(transform_id)
                    if self.io_mode == "save":
                        self.save_plaintext_diagonals(linear_layer.name, transform_id, row, f"{col}_{part}", chosen)
            return transform_ids

        def _transform(self, chosen, values, level, ratio) -> int:
            """A new Lattigo transform of diagonals ``chosen`` at ``level``, encoding ``values`` (their ``N / 2``
            floats each, one after the other); with ``values=None`` none is encoded (Orion's ``load`` mode)."""
            import ctypes

            data = (np.zeros(len(chosen) * self.params.get_slots(), np.float32) if values is None
                    else np.ascontiguousarray(values, np.float32).ravel())
            indices = (ctypes.c_int * len(chosen))(*chosen)
            return self.backend.lib.GenerateLinearTransform(
                indices, len(chosen), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, level,
                float(ratio), b"load" if values is None else b"none")

        def evaluate_transforms(self, linear_layer, in_ctensor):
            if id(in_ctensor) in self.results:
                return self.results.pop(id(in_ctensor))
            return self._evaluate(linear_layer, [in_ctensor])[0]

        @contextlib.contextmanager
        def together(self, linear_layer, inputs):
            """Evaluates the layer's transforms on all ``inputs`` (ciphertext tensors) now, part by part, each
            part's keys and diagonals loaded once for all of them; inside the block the layer's own evaluation of
            each of these inputs takes its result."""
            self.results = dict(zip(map(id, inputs), self._evaluate(linear_layer, inputs)))
            try:
                yield
            finally:
                self.results = {}

        def _evaluate(self, linear_layer, inputs):
            import h5py

            shapes = linear_layer.output_shape, linear_layer.fhe_output_shape
            rows = [{} for _ in inputs]
            with (h5py.File(self.diags_path, "r") if encode_when_loaded else contextlib.nullcontext()) as saved:
                for (row, col), parts in linear_layer.transform_ids.items():
                    for part, transform_id in enumerate(parts):
                        if self.io_mode != "none":
                            start = time.perf_counter()
                            if encode_when_loaded:
                                name, _, _, chosen, level, ratio, keys = self.parts[transform_id]
                                self._hold_keys(keys)
                                loaded = time.perf_counter()
                                block = saved[name]["diagonals"][f"{row}_{col}"]
                                transform_id = self._transform(chosen, np.stack([block[str(i)][()] for i in chosen]),
                                                               level, ratio)
                            else:
                                self._hold_keys(set(self.get_required_rotation_keys(transform_id)))
                                loaded = time.perf_counter()
                                self.load_plaintext_diagonals(linear_layer.name, row, f"{col}_{part}", transform_id)
                            self.key_seconds += loaded - start
                            self.diagonal_seconds += time.perf_counter() - loaded
                        for sums, in_ctensor in zip(rows, inputs):
                            out = tensor(self.scheme, self.backend.EvaluateLinearTransform(
                                transform_id, in_ctensor.ids[col]), *shapes)
                            sums[row] = out if row not in sums else sums[row] + out
                        if encode_when_loaded:
                            self.backend.DeleteLinearTransform(transform_id)
                        elif self.io_mode != "none":
                            self.remove_plaintext_diagonals(transform_id)
            return [tensor(self.scheme, [self.evaluator.rescale(sums[row].ids[0], in_place=False)
                                         for row in sorted(sums)], *shapes) for sums in rows]

        def _hold_keys(self, needed: set[int]):
            """Load the rotation keys ``needed`` by a part that are not loaded yet (consecutive parts share their
            baby steps), after dropping the loaded ones where :func:`hold_keys` says so."""
            import h5py

            held, load = hold_keys(self.held, needed)
            if not self.held <= held:
                self.remove_rotation_keys()
            with h5py.File(self.keys_path, "r") as keys:
                for key in sorted(load):
                    self.backend.LoadRotationKey(keys[str(key)][()], int(key))
            self.held, self.loads = held, self.loads + len(load)

        def delete_transforms(self, transform_ids):
            if encode_when_loaded:  # each part's transform was deleted after it ran
                return
            for parts in transform_ids.values():
                for transform_id in parts:
                    self.backend.DeleteLinearTransform(transform_id)

    return SplitTransforms
