"""End to end on real components: a two-node Ray cluster started here, a real ``mlflow server`` on
127.0.0.1, a search submitted with ``ray job submit``, its runs read back with the MLflow client.

Ray and MLflow processes are started by the fixtures (``.ci/run`` additionally stops any left over).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.helpers import (BIN, child_runs, descendants, free_port, listening, stop_group, three_records,
                           wait_for, write_config)

pytestmark = pytest.mark.slow  # searches on real Ray: minutes (pytest -m 'not slow' skips them)


def ray_env(tmp: Path) -> dict:
    # A loopback-only test cluster: Ray 2.60's token authentication is switched off explicitly.
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
            "PANN_CACHE_DIR": os.environ["PANN_CACHE_DIR"], "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def two_node_cluster():
    """``ray start --head`` plus a second ``ray start --address``: two raylets, one CPU each. Each ``ray start``
    runs with ``--block`` in a process group of its own, with every Ray process it starts; stopping the cluster is
    stopping those two groups (not Ray's own stop command, which would stop every Ray instance of the machine).
    Its temp dir is a short one of its own under /tmp: Ray's socket paths inside a pytest-xdist worker's basetemp
    would pass the 107-byte limit of a Unix socket path."""
    tmp = Path(tempfile.mkdtemp(prefix="pann-ray-"))
    env = ray_env(tmp)
    port, dashboard = free_port(), free_port()
    ray = str(BIN / "ray")
    nodes = []

    def start(name: str, *args: str) -> None:
        with open(tmp / f"{name}.out", "w") as out:  # the ray start's own output, shown if the cluster fails to form
            nodes.append(subprocess.Popen([ray, "start", "--block", *args, "--num-cpus", "1", "--node-ip-address",
                                           "127.0.0.1", "--disable-usage-stats"], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    def up(condition):
        """``condition``, failing at once (with the node's output) where a node's ``ray start`` has ended."""
        def check():
            for name, node in zip(("head", "worker"), nodes):
                if node.poll() is not None:
                    raise RuntimeError(f"ray start ({name}) exited with {node.returncode}:\n"
                                       + (tmp / f"{name}.out").read_text()[-3000:])
            return condition()
        return check

    try:
        start("head", "--head", "--temp-dir", str(tmp / "ray"), "--port", str(port), "--include-dashboard", "true",
              "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard))
        wait_for(up(lambda: listening(port)), 180, "Ray head")
        start("worker", "--address", f"127.0.0.1:{port}")
        wait_for(up(lambda: listening(dashboard)), 120, "Ray dashboard")
        # The second raylet registers with the head asynchronously after `ray start` returns.
        try:
            wait_for(up(lambda: alive_nodes(f"127.0.0.1:{port}", env) >= 2), 120, "the second node to join")
        except TimeoutError:
            print(_cluster_logs(tmp))  # pytest shows it with the failure; the folder is removed below
            raise
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env,
               "worker": nodes[1]}
    finally:
        for node in reversed(nodes):
            stop_group(node, grace_s=5)  # the cluster is thrown away: a head left running after 5 s is killed
        shutil.rmtree(tmp, ignore_errors=True)


def _cluster_logs(tmp: Path) -> str:
    """The tails of the ``ray start`` outputs and of the raylets' and GCS's logs under ``tmp``: why a node did
    not join."""
    paths = [tmp / "head.out", tmp / "worker.out",
             *sorted((tmp / "ray").glob("session_latest/logs/*raylet*")),
             *sorted((tmp / "ray").glob("session_latest/logs/gcs_server*"))]
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-2000:]}" for path in paths if path.is_file())


def alive_nodes(address: str, env: dict) -> int:
    status = subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env,
                            capture_output=True, text=True, timeout=120)
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return active.count("node_")


def test_search_submitted_as_a_job_to_a_two_node_cluster(two_node_cluster, mlflow_server, tmp_path):
    env = two_node_cluster["env"]
    assert alive_nodes(two_node_cluster["address"], env) == 2
    # lr 1e9 makes some trials diverge: each is recorded FAILED and the search goes on.
    cfg = write_config(tmp_path, "job", mlflow_server, lr=[0.05, 1.0e9])
    submit = [str(BIN / "ray"), "job", "submit", "--address", two_node_cluster["dashboard"], "--",
              sys.executable, "-m", "search.cli", "search", str(cfg), "--address", "auto"]
    deadline = time.monotonic() + 120
    while True:
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600,
                             cwd=Path(__file__).resolve().parents[1])
        # The head's job agent starts after its dashboard listens (later on a loaded machine): until then the
        # dashboard refuses the job, which never started, so submitting it again is safe.
        if "No available agent to submit job" not in job.stdout + job.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "4 trials" in job.stdout

    parent, children = child_runs(MlflowClient(mlflow_server), "job")
    assert len(children) == 4 and len({c.data.tags["pann.trial_id"] for c in children}) == 4
    statuses = sorted((float(c.data.params["lr"]) > 1, c.info.status) for c in children)
    # Seed 0 samples both learning rates; every diverging trial FAILED with its error, every other FINISHED.
    assert {s for diverging, s in statuses if diverging} == {"FAILED"}
    assert {s for diverging, s in statuses if not diverging} == {"FINISHED"}
    assert all("TrainingDiverged" in c.data.tags["pann.error"] for c in children if c.info.status == "FAILED")
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(parent.info.run_id, "pareto")}
    assert artifacts == {f"pareto/front.{s}" for s in ("csv", "json", "png", "html")}
    # The front links each point to its trial's run.
    front = json.loads(Path(MlflowClient(mlflow_server).download_artifacts(
        parent.info.run_id, "pareto/front.json", str(tmp_path))).read_text())["front"]
    finished = {c.info.run_id for c in children if c.info.status == "FINISHED"}
    assert front and {p["run_id"] for p in front} <= finished


def trial_running_on(node: subprocess.Popen) -> int | None:
    """PID of a Ray worker of ``node`` (a ``ray start`` this module started) that is running a task, by its process
    title (``ray::...``, not ``ray::IDLE``): on the worker node, only the search's trials run."""
    for pid in descendants(node.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and not title.startswith("ray::IDLE"):
            return pid
    return None


def test_losing_the_worker_node_costs_only_the_trials_it_ran(two_node_cluster, tmp_path):
    """Last of this module: it stops the cluster's second node while one of its trials trains. Tune runs that
    trial again on the head from its checkpoint; the search ends normally with every record in agreement."""
    cfg = write_config(tmp_path, "lose-worker", f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=[3])
    data = yaml.safe_load(cfg.read_text())
    data["budget"].update(trials=4, concurrency=2, max_failures=1)
    data["training"]["train_limit"] = 512  # epochs long enough to stop the node between two of them
    cfg.write_text(yaml.safe_dump(data))
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(cfg), "--address",
                               two_node_cluster["address"]], cwd=tmp_path, env=two_node_cluster["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    def on_worker() -> int | None:
        if driver.poll() is not None:
            raise AssertionError("the search ended before a trial trained on the worker node:\n"
                                 + "".join(driver.communicate())[-3000:])
        return trial_running_on(two_node_cluster["worker"])

    try:
        wait_for(on_worker, 300, "a trial training on the worker node")
        time.sleep(3)  # into its training
        stop_group(two_node_cluster["worker"])
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            stop_group(driver)
    assert driver.returncode == 0, out[-2000:] + err[-3000:]
    assert list(three_records(tmp_path, "lose-worker").values()) == [("COMPLETE", "FINISHED", "final")] * 4
    assert child_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "lose-worker")[0].info.status == "FINISHED"
