"""Files: atomic writes and YAML mappings, the two file jobs every part of the project shares.

:func:`atomic_write` gives a temporary path beside the target and moves it over the target
with :func:`os.replace` only when the writer returns, so a reader never sees a half-written
file and a failed write leaves the old file (or nothing) in place. :func:`read_yaml` reads a
YAML file that must hold a mapping (configs), with one-line messages naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder; moved onto ``path`` when the ``with`` block succeeds.

    Parent folders are created. The temporary name is hidden, unique per process and
    removed when the block raises, e.g.::

        with atomic_write(out) as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as temporary:
        temporary.write_bytes(data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping held by the YAML file ``path``; an empty file is an empty mapping.

    Raises ``FileNotFoundError`` naming a missing file, and ``ValueError`` naming the file
    when it is not valid YAML or holds something other than a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"config file not found: {path} is a directory") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of fields, got {type(data).__name__}")
    return data


def check_writable(path: str | Path, what: str) -> None:
    """Raise ``OSError`` naming ``what`` (e.g. ``--out``) unless a file can be written at ``path``: checked by
    creating and removing an empty file in its nearest existing folder, before any long work."""
    import tempfile

    path = Path(path).absolute()
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pann-probe-"):
            pass
    except OSError as exc:
        raise PermissionError(f"{what} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
