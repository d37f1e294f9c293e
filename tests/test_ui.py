"""``pann ui``: the MLflow UI for the store in the current folder, reachable on loopback only."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request

from tests.helpers import free_port, wait_for
from tracking.recorder import SearchRecorder


def own_address() -> str | None:
    """This machine's address on its first non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


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
        address = own_address()
        if address is not None:
            with socket.socket() as s:
                assert s.connect_ex((address, port)) != 0, f"UI reachable on {address}"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)


def test_ui_without_a_store_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "search.cli", "ui"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "no MLflow store here" in result.stderr
