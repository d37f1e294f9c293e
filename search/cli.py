"""The ``pann`` command: the numerical commands of :mod:`pann.cli` plus ``search``, ``pareto`` and ``ui``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pann.cli import add_verbose, build_parser
from pann.cost.objectives import OBJECTIVES
from pann.console import progress_line

_FORMATS = (".csv", ".json", ".png", ".html")


def cmd_search(args: argparse.Namespace) -> None:
    from pann.cli import exit_code
    from pann.data import download
    from search import config
    from search.preflight import check_address
    from search.supervisor import supervised

    search = config.load(args.config)
    check_address(args.address)  # here, before the driver starts: it waits minutes for a cluster that is not there
    download(search.dataset, search.data_dir)  # once, before the trials read it in parallel
    # A failed trial is one line (the search's log), its traceback in MLflow (tag pann.error) and Tune's error.txt;
    # Tune would also print every traceback here.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # SIGTERM ends a search as Ctrl-C does: Tune stops, records what finished, and --resume continues it.
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    code = supervised(lambda: exit_code("search", lambda: _drive(args, search)),
                      lambda why: _close_records(search, why))
    if code:
        raise SystemExit(code)


def _drive(args: argparse.Namespace, search) -> None:
    """The search's driver (a child process of ``pann search``, see :mod:`search.supervisor`)."""
    from search.preflight import SearchFinished
    from search.runner import run_search

    try:
        outcome = run_search(search, address=args.address, resume=args.resume, progress=progress_line(),
                             force_new=args.force_new, sigterm_interrupts=True)
    except SearchFinished as done:
        print(f"pann search: {done}")
        return
    print_outcome(outcome, search)


def _close_records(search, why: str) -> None:
    """After a driver that died without a word: its MLflow runs closed (the parent FAILED, running trials KILLED;
    Optuna's running trials stay for --resume to adopt), and one line saying so."""
    from tracking.recorder import SearchRecorder

    finished = SearchRecorder(search.tracking_uri, search.experiment).close_search(search.name, "FAILED")
    done = "" if finished is None else f" after {finished} of {search.trials} trials"
    print(f"pann search: search {search.name!r} stopped{done}: its driver {why} (a lost Ray node or out of "
          "memory?); its records are closed; continue it with --resume", file=sys.stderr)


def _costs(point) -> str:
    return ", ".join(f"{k} {point.costs[k]:g}" for k in ("bootstraps", "levels", "latency_s") if k in point.costs)


def print_outcome(outcome, search, out=sys.stdout) -> None:
    """The end of a search, for people: the answer, how it was confirmed, and the front."""
    trainings = "1 backbone training" if outcome.backbone_trainings == 1 else \
        f"{outcome.backbone_trainings} backbone trainings"
    print(f"\n{outcome.trials} trials, {trainings}", file=out)
    for point, score in outcome.checked:
        print(f"  candidate {point.trial} (alpha {point.alpha:.2f}, {_costs(point)}): confirmation "
              f"{100 * score:.2f}%", file=out)
    if outcome.answer is None:
        why = "on the confirmation images" if outcome.checked else ""
        print(f"no trial reached the target accuracy {100 * search.target_accuracy:.2f}% {why}".rstrip(), file=out)
    else:
        a = outcome.answer
        confirmed = "" if outcome.confirmation_accuracy is None else \
            f", confirmation {100 * outcome.confirmation_accuracy:.2f}%"
        print(f"cheapest ({search.cost}) meeting {100 * search.target_accuracy:.2f}%: alpha {a.alpha:.3g} "
              f"(validation {100 * a.accuracy:.2f}%{confirmed}, test {100 * outcome.test_accuracy:.2f}%, "
              f"depth {a.depth}{', ' + _costs(a) if a.costs else ''}), trial {a.trial}, "
              f"backbone {a.params.get('backbone') or 'pretrained'}", file=out)
    print("feasible Pareto front (alpha, validation accuracy, depth, costs, trial):", file=out)
    for p in outcome.front:
        print(f"  {p.alpha:>5.3g}  {100 * p.accuracy:6.2f}%  {p.depth:3d}  {_costs(p)}  {p.trial}", file=out)
    print(f"MLflow parent run {outcome.parent_run_id} ({search.tracking_uri}); "
          f"front files in {search.run_dir / 'pareto'}", file=out)


def cmd_pareto(args: argparse.Namespace) -> None:
    from mlflow import MlflowClient

    from tracking.front_export import export_front
    from tracking.records import find_search, trial_points

    if args.out.suffix not in _FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(_FORMATS)} (got {args.out.name!r})")
    uri = _store(args)
    client = MlflowClient(uri)
    parents = list(args.run_id or []) + [find_search(client, name) for name in args.search or []]
    points = [p for parent in parents for p in trial_points(client, parent)]
    target = args.target
    if target is None:
        target = float(client.get_run(parents[0]).data.params["target_accuracy"])
    front = export_front(args.out, points, target, title=", ".join(args.search or args.run_id), x=args.x)
    print(f"{len(front)} front points of {len(points)} measured, target {100 * target:.2f}%, written to {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    """What running a search's answer elsewhere needs: its spec, the backbone weights, the answer record and the
    registered MLflow model, in one folder."""
    import json
    import shutil

    import mlflow
    from mlflow import MlflowClient

    uri = _store(args)
    client = MlflowClient(uri)
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"--out {args.out} exists and is not empty")
    try:
        model = client.get_run(args.run_id).data.params.get("model", "MODEL")
        args.out.mkdir(parents=True, exist_ok=True)
        answer = json.loads(Path(client.download_artifacts(args.run_id, "answer.json", str(args.out))).read_text())
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing run or artifact
        raise ValueError(f"run {args.run_id} has no answer (answer.json) in {uri}: {exc}".splitlines()[0]) from None
    client.download_artifacts(args.run_id, "answer_spec.json", str(args.out))
    artifacts = {a.path for a in client.list_artifacts(args.run_id)}
    picture = "answer.png" in artifacts  # the answer drawn (searches since the picture was added)
    if picture:
        client.download_artifacts(args.run_id, "answer.png", str(args.out))
    backbone = answer["config"].get("backbone")
    if backbone:
        shutil.copy(backbone, args.out / "backbone.pt")
    versions = client.search_model_versions(f"run_id = '{args.run_id}'")
    if versions:
        mlflow.set_tracking_uri(uri)
        mlflow.artifacts.download_artifacts(f"models:/{versions[0].name}/{versions[0].version}",
                                            dst_path=str(args.out / "mlflow_model"))
    print(f"answer of run {args.run_id} written to {args.out}: answer.json, answer_spec.json"
          + (", answer.png" if picture else "") + (", backbone.pt" if backbone else "") + (", mlflow_model/" if versions else "")
          + f"; rebuild with: pann evaluate --model {model} "
          f"--weights {args.out / 'backbone.pt'} --spec {args.out / 'answer_spec.json'}")


def cmd_fhe_check(args: argparse.Namespace) -> None:
    """``pann fhe-check``; with ``--run-id``, the answer of that search, its results recorded under its run."""
    import tempfile

    from pann.fhe.cli import fhe_check
    from pann.models.weights import WEIGHTS

    if not args.run_id:
        return fhe_check(args)
    from mlflow import MlflowClient

    from tracking.checks import answer_source, log_check

    uri = _store(args)  # a server must answer; a sqlite file must exist
    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory(prefix="pann-fhe-spec-") as folder:
        source = answer_source(client, args.run_id, folder)
        if args.model and args.model != source.model:
            raise ValueError(f"--model {args.model}, but search run {args.run_id} is of {source.model}")
        args.spec, args.model, args.dataset = source.spec, source.model, source.dataset
        args.weights = args.weights or source.weights or None
        if args.weights and not Path(args.weights).is_file() and args.weights not in WEIGHTS:
            raise ValueError(f"the answer's backbone weights {args.weights} (recorded by run {args.run_id}) are "
                             "not on this machine; pass --weights")
        recorded = []
        fhe_check(args, record=lambda report: recorded.append(log_check(client, args.run_id, report)))
    if recorded:
        print(f"recorded under MLflow run {args.run_id} ({uri}): metrics fhe_check/..., artifact {recorded[0]}",
              file=sys.stderr if args.json else sys.stdout)  # --json: stdout holds the report alone


def _store(args: argparse.Namespace) -> str:
    """The MLflow store a reading command opens: ``--tracking-uri`` or ./mlflow.db, which must exist (a mistyped
    path must not create a folder and an empty database) or answer (a server)."""
    from tracking.stores import check_existing_store, default_tracking_uri

    if args.tracking_uri:
        check_existing_store(args.tracking_uri)
        return args.tracking_uri
    uri = default_tracking_uri()
    if not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store here ({uri}); run a search in this folder or pass --tracking-uri")
    return uri


def _check_port_free(host: str, port: int) -> None:
    """The UI's address can be listened on (a port in use fails here, not in a traceback of the server)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def cmd_ui(args: argparse.Namespace) -> None:
    from tracking.stores import artifact_location, server_environment

    uri = _store(args)  # a server must answer; a sqlite file must exist
    if uri.startswith(("http://", "https://")):
        raise ValueError(f"--tracking-uri {uri} is a tracking server: it serves its own UI there")
    _check_port_free(args.host, args.port)
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    if artifact_location(uri):
        command += ["--default-artifact-root", artifact_location(uri)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C to stop)", flush=True)
    os.execvpe(sys.executable, [sys.executable, "-m", *command], server_environment(os.environ))


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {text}")
    return value


def build_full_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    se = sub.add_parser("search", help="search the lowest precision meeting a target accuracy (see configs/)")
    se.add_argument("config", help="YAML search config, e.g. configs/quickstart.yaml")
    se.add_argument("--address", help="Ray cluster to run on (e.g. auto); default: a local Ray instance")
    start = se.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue an interrupted search of the same name, with the config it started with")
    start.add_argument("--force-new", action="store_true",
                       help="discard an earlier search of the same name (runs/NAME and its MLflow runs), start anew")
    se.set_defaults(run=cmd_search)

    pa = sub.add_parser("pareto", help="export the feasible Pareto front of searches from MLflow")
    which = pa.add_mutually_exclusive_group(required=True)
    which.add_argument("--search", action="append", help="search name (repeat to merge searches)")
    which.add_argument("--run-id", action="append", help="parent run id of a search (repeatable)")
    pa.add_argument("--out", type=Path, required=True, help="FILE.csv, .json, .png or .html")
    pa.add_argument("--target", type=float, help="target accuracy (default: the first search's)")
    pa.add_argument("--x", choices=tuple(OBJECTIVES), default="alpha",
                    help="the cost on the x axis (default alpha; the others need a search with a cost model)")
    pa.add_argument("--tracking-uri", help="MLflow store (default: ./mlflow.db)")
    pa.set_defaults(run=cmd_pareto)

    ex = sub.add_parser("export", help="write a search's answer (spec, weights, MLflow model) to a folder")
    ex.add_argument("--run-id", required=True, help="parent run id of the search")
    ex.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    ex.add_argument("--tracking-uri", help="MLflow store (default: ./mlflow.db)")
    ex.set_defaults(run=cmd_export)

    ui = sub.add_parser("ui", help="browse the searches in the MLflow UI")
    ui.add_argument("--tracking-uri", help="MLflow store (default: ./mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=_port, default=5000)
    ui.set_defaults(run=cmd_ui)
    sub.choices["fhe-check"].set_defaults(run=cmd_fhe_check)  # --run-id reads and records MLflow runs
    add_verbose(sub)
    return parser


def _quiet_libraries() -> None:
    """What a command shows of the stack without ``--verbose``: its warnings, not its notices, tables and progress
    bars (MLflow's INFO lines and download bars, Optuna's "A new study created", Tune's experiment table and
    TensorBoard hint, Ray's token-authentication notice for the local instance, torch's CUDA_HOME notice)."""
    import logging

    import optuna.logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when MLflow sets up its own handler
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter is silent at verbose=0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # torch's compiler, on a machine without CUDA, on where it looked for CUDA_HOME: nothing a CPU search uses
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    from pann.cli import run

    return run(build_full_parser(), argv, quiet_libraries=_quiet_libraries)


if __name__ == "__main__":
    sys.exit(main())
