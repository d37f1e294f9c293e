"""What the command lines share (``pann`` and ``pann fhe-check``): the status line of slow work and the
``--weights`` argument turned into a local file."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

__all__ = ["progress_line", "weights_file"]


def progress_line(every_s: float = 0.0, stream=None):
    """A status line for slow work: ``show(text)`` rewrites it in place on a terminal; elsewhere (a log file)
    it prints a line at most every ``every_s`` seconds, and always when ``final``. ``show(None)`` ends it."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    shown = {"at": -math.inf, "open": False}

    def show(text: str | None, final: bool = False) -> None:
        if text is None:
            if shown["open"]:
                print(file=stream, flush=True)
            shown["open"] = False
            return
        if tty:
            print(f"\r\033[K{text}", end="", file=stream, flush=True)
            shown["open"] = True
        elif final or time.monotonic() - shown["at"] >= every_s:
            print(text, file=stream, flush=True)
            shown["at"] = time.monotonic()
    return show


def weights_file(args: argparse.Namespace):
    """The local weights file of ``--weights`` (a path, or a name fetched from the data folder, the torch hub
    cache or the source; ``$PANN_WEIGHTS_URL`` names a mirror), checked against ``--model``."""
    from pann.data import default_data_dir  # here: the command line starts without torch
    from pann.models.weights import resolve

    return resolve(args.weights, args.data_dir or default_data_dir(), os.environ.get("PANN_WEIGHTS_URL"),
                   model=args.model)
