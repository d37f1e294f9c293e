"""Where MLflow records live: the embedded sqlite store or a tracking server, and the cheap checks that
find a wrong one before anything is written to it (a mistyped path, a URI MLflow cannot use, a server
that does not answer)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

# The forms of tracking URI this project records to: the embedded store, a server, or a database MLflow
# supports as its backend. A bare path (``other.db``) or ``file:`` would select MLflow's retired file store.
URI_FORMS = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")


class TrackingUnavailable(ConnectionError):
    """The tracking server does not answer."""


def default_tracking_uri(folder: str | Path = ".") -> str:
    """The embedded store: a sqlite database in ``folder``, as an absolute URI."""
    return f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"


def artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store, an absolute ``mlartifacts`` folder beside the database (MLflow's default is
    ``./mlruns`` of whatever directory the process runs in); a server decides for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


# MLflow 3's server starts a job runner beside itself (seven huey consumer processes, about 250 MB and two
# seconds of CPU each at start) for its GenAI jobs; browsing and recording searches needs none of it.
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for an ``mlflow server`` / ``mlflow ui`` this project starts: ``environ`` with MLflow's
    job runner off, unless ``environ`` sets :data:`JOB_EXECUTION` itself."""
    return {JOB_EXECUTION: "false", **environ}


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a tracking URI this project can record to, or None."""
    if uri.startswith(URI_FORMS):
        return None
    return (f"{uri!r} is not an MLflow tracking URI; use sqlite:///PATH/mlflow.db (a file) or "
            "http://HOST:PORT (a server)")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(f"MLflow tracking server {uri} is not reachable ({problem}); start it "
                              "(mlflow server --host 127.0.0.1 ...) or fix tracking.uri")


def check_existing_store(uri: str) -> None:
    """For commands that read records: ``uri`` must name a store that exists (a sqlite file that is there, a
    server that answers), so that a mistyped path fails instead of creating a folder and an empty database."""
    problem = uri_problem(uri)
    if problem:
        raise ValueError(f"--tracking-uri: {problem}")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri.removeprefix('sqlite:///')} ({uri})")
    check_reachable(uri)
