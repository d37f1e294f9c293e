"""One run of a search at a time: an exclusive lock on the search's name in its storage folder, held while it runs.

A second ``pann search`` of the same name (in the same ``storage``) is refused at once, naming the process that
holds the lock, instead of running beside it and writing the same records twice. The lock is the operating system's
(``fcntl.flock`` on ``storage/.locks/NAME.lock``): a process that dies, however it dies, releases it. The lock file
is removed when the lock is released (and the folders made for it, when empty), so a refused search leaves nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class SearchLocked(ValueError):
    """The search is running in another process."""


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def search_lock(storage: str | Path, name: str) -> Iterator[Path]:
    """Hold the lock of search ``name`` in ``storage`` for the ``with`` block; :class:`SearchLocked` naming the
    holder when another process has it."""
    path = Path(storage) / ".locks" / f"{name}.lock"
    made = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(path, name)
    try:
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting process then finds a new file
        handle.close()
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: the search's records are there
                folder.rmdir()


def _acquire(path: Path, name: str):
    """The lock file, open and locked; it is the file at ``path`` (one a releasing process unlinked is left)."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SearchLocked(f"search {name!r} is already running ({holder}); wait for it to end or stop it "
                               "before starting or resuming it again") from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.truncate(0)
            return handle
        handle.close()
