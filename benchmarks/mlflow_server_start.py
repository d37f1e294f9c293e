"""What an ``mlflow server`` costs to start, with MLflow's job runner (its default) and without it (what this
project's servers run with: ``tracking.stores.server_environment``), measured one after the other in one run.

    python benchmarks/mlflow_server_start.py [--settle 10]

For each: seconds until ``/health`` answers, then, ``--settle`` seconds later, the processes in the server's
process group, their CPU time (user + system, from ``/proc``) and their resident memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tracking.stores import JOB_EXECUTION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group(pgid: int) -> list[Path]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                found.append(proc)
        except OSError:
            continue
    return found


def _usage(procs: list[Path]) -> tuple[float, float]:
    """CPU seconds and resident GiB of ``procs``."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu = rss = 0.0
    for proc in procs:
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int((proc / "statm").read_text().split()[1]) * page
        except OSError:
            continue
    return cpu, rss / 2**30


def measure(job_execution: bool, settle: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="pann-mlflow-bench-"))
    port = _free_port()
    env = {**os.environ, JOB_EXECUTION: "true" if job_execution else "false"}
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
            if time.monotonic() - started > 300:
                raise SystemExit("mlflow server did not answer within 300 s")
        healthy = time.monotonic() - started
        time.sleep(settle)
        procs = _group(server.pid)
        cpu, rss = _usage(procs)
        return {"health_s": healthy, "processes": len(procs), "cpu_s": cpu, "rss_gib": rss}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after /health before measuring")
    args = parser.parse_args()
    on, off = measure(True, args.settle), measure(False, args.settle)
    for name, row in (("job runner on (MLflow's default)", on), ("job runner off (this project)", off)):
        print(f"{name:34s} /health after {row['health_s']:5.1f} s, {row['processes']:2d} processes, "
              f"{row['cpu_s']:5.1f} CPU s, {row['rss_gib']:.2f} GiB resident")
    print(f"off/on: CPU {off['cpu_s'] / on['cpu_s']:.2f}x, memory {off['rss_gib'] / on['rss_gib']:.2f}x, "
          f"processes {off['processes']}/{on['processes']}")


if __name__ == "__main__":
    main()
