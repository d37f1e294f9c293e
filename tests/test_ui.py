"""``pann ui``: the MLflow UI for the store in the current folder, reachable on loopback only."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import descendants, free_port, wait_for
from tracking.recorder import SearchRecorder


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses sockets listen on at ``port`` on this machine (from /proc/net/tcp, tcp6)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = f"/proc/net/{table}"
        if not os.path.exists(path):
            continue
        for line in open(path).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


@pytest.mark.slow
def test_ui_serves_the_local_store_on_loopback_only(tmp_path):
    SearchRecorder(f"sqlite:///{tmp_path / 'mlflow.db'}", "pann-search").start_search("s", {"target_accuracy": 0.5})
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the MLflow UI")
        # Whatever interfaces this machine has: the UI listens on the loopback address only.
        assert listening_addresses(port) == {"127.0.0.1"}
        # MLflow's job runner for its GenAI jobs (mlflow.server.jobs._job_runner, started with the server, and
        # its huey consumers) is not started beside it.
        assert not [pid for pid in descendants(ui.pid) if b"mlflow.server.jobs" in _command(pid)]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)


def test_ui_without_a_store_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "search.cli", "ui"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "no MLflow store here" in result.stderr
