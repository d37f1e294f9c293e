"""The work folder of an encrypted check: keys and matrix diagonals on disk (tens of GB for a ResNet at
``bootstrap-128``), in a folder marked with the process that owns it.

A run that dies (the kernel's OOM killer, SIGKILL) cannot remove its folder; the next run does:
:func:`work_folder` first removes the ``pann-fhe-*`` folders whose owner is no longer running on this machine,
saying what it removed and how much, and names those of other machines or live runs it leaves alone.

How large the folder will be is known before the first key is written (:func:`folder_size`, from each linear
transform's level and diagonals), so a check that would fill the disk is refused then (:func:`refuse_unless_room`),
not tens of minutes later.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "pann-fhe-"
_OWNER = "owner.json"


def _size_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30


def folder_gb(folder: Path) -> float:
    """What the files under ``folder`` hold, in GB (10^9 bytes, as ``df -H`` and the estimates here count)."""
    return _size_gib(folder) * 2**30 / 1e9


def bsgs_rotations(diagonals: Iterable[int], slots: int, log_ratio: int) -> set[int]:
    """The rotations (each in ``[0, slots)``) whose keys Lattigo's baby-step giant-step evaluation of a linear
    transform with these nonzero ``diagonals`` needs: ``GaloisElements`` of ``circuits/common/lintrans`` in Lattigo
    v6.2, the version orion-fhe 1.0.2 builds.

    A diagonal ``d`` (taken mod ``slots``) is split as ``d = g + b`` with the giant step ``g = N1 floor(d / N1)`` and
    the baby step ``b = d mod N1``; the keys are those of every ``g`` and every ``b``. ``N1`` is the smallest power of
    two from 1 at which (giant steps - 1) / (baby steps - 1) reaches ``2^log_ratio`` (halved where it passes it), as
    Lattigo's ``FindBestBSGSRatio``; ``log_ratio < 0`` means no baby steps (``N1 = slots``: a key per diagonal).
    Exact: the tests compare it with the keys Lattigo asks for."""
    diagonals = sorted({d & (slots - 1) for d in diagonals})

    def steps(n1: int) -> tuple[set[int], set[int]]:
        return {(d // n1) * n1 & (slots - 1) for d in diagonals}, {d & (n1 - 1) for d in diagonals}

    if log_ratio < 0:
        return steps(slots)[1]
    n1, best = 1, None
    while n1 < slots:
        giant, baby = steps(n1)
        ratio = (len(baby) - 1) / (len(giant) - 1) if len(giant) > 1 else (math.inf if len(baby) > 1 else math.nan)
        if ratio >= 2 ** log_ratio:  # (NaN, 0 / 0, compares false: on to the next N1, as in Go)
            best = n1 if ratio == 2 ** log_ratio else n1 // 2
            break
        n1 <<= 1
    giant, baby = steps(best if best is not None else 1)
    return giant | baby


@dataclass(frozen=True)
class FolderSize:
    """What a check's work folder will hold: ``keys`` rotation keys of ``key_bytes`` in all, and ``diagonals``
    plaintext diagonals of ``diagonal_bytes``."""

    keys: int
    diagonals: int
    key_bytes: int
    diagonal_bytes: int

    @property
    def gb(self) -> float:
        return (self.key_bytes + self.diagonal_bytes) / 1e9


def folder_size(transforms: Iterable[tuple[int, Sequence[int], int]], log_n: int, q_primes: int,
                p_primes: int, encoded: bool = True) -> FolderSize:
    """What Orion 1.0.2 saves (``io_mode: save``) for ``transforms``, each ``(level, nonzero diagonals, log2 of its
    baby-step giant-step ratio)``, under CKKS with ring degree ``N = 2^log_n``, ``q_primes`` ciphertext moduli and
    ``p_primes`` key-switching ones; in words of 8 bytes:

    - a diagonal, twice: encoded, a plaintext at its transform's level over the ``level + 1`` moduli of ``Q`` and all
      of ``P``, ``(level + 1 + p_primes) N`` (not with ``encoded=False``: encoded when loaded,
      :func:`pann.fhe.patches.split_transforms`); and Orion's own copy of its ``N / 2`` values;
    - a rotation key, once for the whole network (transforms share them, :func:`bsgs_rotations`), at the top level:
      ``dnum = ceil(q_primes / p_primes)`` digits of two polynomials over all moduli, ``2 dnum (q_primes + p_primes)
      N``; beside them, the secret key, ``(q_primes + p_primes) N``.

    Exact up to the serialization's and HDF5's headers (measured: 0.2% under the folder for the tests' ResNet at
    ``N = 2^12``)."""
    n, rotations, diagonals, diagonal_words = 1 << log_n, set(), 0, 0
    for level, indices, log_ratio in transforms:
        rotations |= bsgs_rotations(indices, n // 2, log_ratio)
        diagonals += len(indices)
        diagonal_words += len(indices) * ((level + 1 + p_primes) * n * encoded + n // 2)
    digits = -(-q_primes // p_primes)
    key_words = (len(rotations) * 2 * digits + 1) * (q_primes + p_primes) * n
    return FolderSize(len(rotations), diagonals, key_words * 8, diagonal_words * 8)


class InsufficientDisk(OSError):
    """A check's work folder would not fit on the disk under it."""


def refuse_unless_room(size: FolderSize, folder: Path) -> None:
    """:class:`InsufficientDisk` (one line, what it needs and what is free) when ``size`` exceeds the free disk under
    ``folder``; otherwise log both."""
    free = shutil.disk_usage(folder).free / 1e9
    logger.info("the work folder will hold about %.1f GB: %d rotation keys (%.1f GB) and %d diagonals (%.1f GB); "
                "%.1f GB free on its disk", size.gb, size.keys, size.key_bytes / 1e9, size.diagonals,
                size.diagonal_bytes / 1e9, free)
    if size.gb > free:
        raise InsufficientDisk(f"the work folder would hold about {size.gb:.1f} GB of keys and diagonals but the "
                               f"disk under {folder.parent} has {free:.1f} GB free (refused before any key was "
                               "written): free disk space, give --workdir a larger disk, or use a preset with fewer "
                               "levels")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_leftovers(parent: str | Path | None = None) -> list[tuple[Path, float]]:
    """Remove the work folders under ``parent`` (default: the system's temporary folder) whose owner process on this
    machine has ended; return each removed folder with its size in GiB. Folders of live runs, of other machines, or
    without an owner record are left (the last ones named in the log)."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in sorted(parent.glob(f"{PREFIX}*")):
        if not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / _OWNER).read_text())
        except (OSError, ValueError):
            logger.warning("%s holds %.1f GiB and names no owner: left as it is", folder, _size_gib(folder))
            continue
        if owner.get("host") != socket.gethostname() or _alive(int(owner.get("pid", 0))):
            continue
        size = _size_gib(folder)
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("removed %s: %.1f GiB left by an encrypted check that ended without cleaning up "
                       "(process %s, started %s)", folder, size, owner.get("pid"), owner.get("started"))
        removed.append((folder, size))
    return removed


def _remove(folder: Path) -> None:
    """Remove ``folder`` whole, also when a signal's exception (SIGTERM's exit, Ctrl-C's ``KeyboardInterrupt``) lands
    in the middle of the removal: it is raised once the folder is gone."""
    interrupted: BaseException | None = None
    while True:
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except BaseException as exc:  # noqa: BLE001 - raised below, once the folder is gone
            interrupted = exc
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def work_folder(parent: str | Path | None = None) -> Iterator[Path]:
    """A new work folder under ``parent``, named after this process and marked with it, removed when the block ends;
    leftovers of dead runs are removed first (:func:`clean_leftovers`). The free disk under it is logged; a block that
    fills the disk (``ENOSPC``) raises ``OSError`` in one line naming the folder's disk and how much the folder held.

    The folder is made inside the block that removes it (no instant at which a signal's exception could leave it
    behind, as ``tempfile.TemporaryDirectory`` has between making and registering its folder)."""
    clean_leftovers(parent)
    # 64 random bits beside the process id: the name is no other run's, on this machine or another sharing the disk
    folder = Path(parent or tempfile.gettempdir()) / f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        folder.mkdir(mode=0o700)
        (folder / _OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        logger.info("keys and diagonals in %s: %.1f GB free on its disk", folder, shutil.disk_usage(folder).free / 1e9)
        yield folder
    except OSError as exc:
        if exc.errno != errno.ENOSPC and "No space left on device" not in str(exc):
            raise
        raise OSError(errno.ENOSPC, f"the disk under {folder.parent} filled up when the work folder held "
                                    f"{folder_gb(folder):.1f} GB of keys and diagonals (removed "
                                    "now): free disk space or give --workdir a larger disk") from None
    finally:
        _remove(folder)
