"""Replacements for two internals of orion-fhe 1.0.2 that do not fit a 24 GB machine.

:mod:`pann.fhe.backend` installs them (it alone imports the library and hands its pieces in here):

1. ``orion.core.packing.diagonalize`` densifies every ``slots x slots`` block of a weight
   matrix (float64, float32 and a gathered copy: about 17 GB for one block at LogN 16).
   :func:`sparse_diagonalize` reads the same diagonals from the sparse nonzeros.
2. ``orion.backend.python.bootstrapper.NewEvaluator`` builds one bootstrapper per tensor
   size, 9-13 GiB each at LogN 16. :func:`single_bootstrapper` builds one, for the largest
   size requested, and bootstraps every tensor with it (Orion's bootstrap prescale zeroes
   the unused slots).

Both are pinned to the signatures in :data:`PATCHED`; :func:`check_signatures` refuses
another version of the library rather than patching it blindly.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import defaultdict

import numpy as np

logger = logging.getLogger(__name__)

ORIGINALS: dict = {}  # the library's own functions, by the names of PATCHED, once replaced

PATCHED = {
    "orion.core.packing.diagonalize": ["matrix", "num_slots", "embed_method", "is_last_layer"],
    "orion.backend.python.bootstrapper.NewEvaluator.generate_bootstrapper": ["self", "slots"],
    "orion.backend.python.bootstrapper.NewEvaluator.bootstrap": ["self", "ctxt", "slots"],
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
    the number of ciphertexts bootstrapped so far.
    """

    class SingleBootstrapper(base):
        def __init__(self, scheme):
            super().__init__(scheme)
            self.requested, self.slots, self.count = 0, None, 0

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
            return base.bootstrap(self, ctxt, self.slots)

    return SingleBootstrapper
