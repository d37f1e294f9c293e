"""A search's driver in a child process, so that its records are closed however the driver ends.

Ray ends a driver whose raylet died with an immediate exit (no Python cleanup runs), and the kernel's OOM killer
or a SIGKILL leave no chance either: the MLflow parent run and the trials' runs would stay RUNNING. The supervising
process (the ``pann search`` the user started) forks the driver, forwards it SIGINT and SIGTERM (the driver has a
process group of its own, so a terminal's Ctrl-C reaches it once, through here), and when the driver dies before it
reports how it ended, runs ``on_death`` (close the records) and says so. The driver gets SIGTERM if the supervisor
dies (Linux), and stops as after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable

_FORWARDED = (signal.SIGINT, signal.SIGTERM)


def supervised(work: Callable[[], int], on_death: Callable[[str], None]) -> int:
    """Run ``work`` (which handles its own errors and returns an exit code) in a forked child and return that code;
    an error ``work`` did not handle is printed with its traceback (code 1); when the child ends without returning a
    code, ``on_death(why)`` runs here and the code is 1."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the driver
        os.close(read_end)
        os.setpgid(0, 0)
        _stop_when_orphaned()
        code = 1
        try:
            code = work()
        except BaseException:  # os._exit below would end the process before the exception was ever printed
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(write_end, str(code).encode())
            os._exit(code)
    os.close(write_end)
    previous = {s: signal.getsignal(s) for s in _FORWARDED}
    for s in _FORWARDED:
        signal.signal(s, lambda signum, frame: _forward(pid, signum))
    try:
        _, status = os.waitpid(pid, 0)
        reported = os.read(read_end, 16)
    finally:
        os.close(read_end)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if reported:
        return int(reported)
    why = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else \
        f"exited with code {os.WEXITSTATUS(status)} before it could say why"
    on_death(why)
    return 1


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _stop_when_orphaned() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
