"""The work folder of an encrypted check: keys and matrix diagonals on disk (tens of GB for a ResNet at
``bootstrap-128``), in a folder marked with the process that owns it.

A run that dies (the kernel's OOM killer, SIGKILL) cannot remove its folder; the next run does:
:func:`work_folder` first removes the ``pann-fhe-*`` folders whose owner is no longer running on this machine,
saying what it removed and how much, and names those of other machines or live runs it leaves alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "pann-fhe-"
_OWNER = "owner.json"


def _size_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30


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
                                    f"{_size_gib(folder) * 2**30 / 1e9:.1f} GB of keys and diagonals (removed "
                                    "now): free disk space or give --workdir a larger disk") from None
    finally:
        _remove(folder)
