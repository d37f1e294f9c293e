"""The MLflow side of an encrypted check (``pann fhe-check --run-id``): the answer of a search to check, read
from its parent run, and the check's results recorded under that run (metrics and a JSON artifact).

Metrics are named ``fhe_check/<parameters>/<name>``, so checks under different CKKS presets sit side by side;
per-image values are metric histories with the image's index as step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from tracking.records import search_parent_run
from tracking.schema import metric_values

ANSWER_SPEC = "answer_spec.json"
CHECK_TAG = "pann.fhe_check"
_PER_IMAGE = ("max_logit_error", "seconds", "bootstraps", "agrees")


@dataclass(frozen=True)
class AnswerSource:
    """What rebuilding a search's answer needs: its spec file (downloaded), model, dataset, and the backbone
    weights it was measured with (a path on the machine that ran the search, or a named weights file)."""

    spec: Path
    model: str
    dataset: str
    weights: str


def answer_source(client: MlflowClient, run_id: str, folder: str | Path) -> AnswerSource:
    """The answer of the search whose parent run is ``run_id``, its spec downloaded into ``folder``.

    Raises ``ValueError`` (one line) when the run does not exist, is not a search's parent run, or has no answer.
    """
    run = search_parent_run(client, run_id)
    if ANSWER_SPEC not in {a.path for a in client.list_artifacts(run_id)}:
        raise ValueError(f"search run {run_id} has no answer ({ANSWER_SPEC}): it found no PANN meeting its "
                         "target, or has not finished")
    path = Path(client.download_artifacts(run_id, ANSWER_SPEC, str(folder)))
    spec = json.loads(path.read_text())
    params = run.data.params
    return AnswerSource(path, spec.get("model") or params.get("model", ""), params.get("dataset", "cifar10"),
                        spec.get("weights") or params.get("weights") or "")


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of a check report (see ``pann.fhe.cli.fhe_check``) worth a metric, by name."""
    results = report["results"]
    n = len(results)
    return metric_values({"images": n, "agreement": sum(r["agrees"] for r in results) / n,
                     "max_logit_error": max(r["max_logit_error"] for r in results),
                     "bootstraps": max(r["bootstraps"] for r in results), "levels": report["depth"],
                     "seconds_per_image": sum(r["seconds"] for r in results) / n,
                     "batch": report.get("batch", 1),  # images run beside each other (the seconds are per image)
                     "bootstrap_seconds_per_image": sum(row["bootstrap_seconds"] for r in results
                                                        for row in r.get("layers", ())) / n,
                     # what 100 images would take: one compilation, then each image as these took on average
                     "estimated_seconds_100_images": report["compile_seconds"] + 100 * sum(r["seconds"] for r in results) / n,
                     "compile_seconds": report["compile_seconds"], "peak_memory_gib": report["peak_memory_gib"],
                     # keys and diagonals on disk once compiled (none without a work folder)
                     "work_folder_gb": (report.get("work_folder") or {}).get("gb"),
                     "cost_model_bootstraps": report["cost_model_bootstraps"]})


def log_check(client: MlflowClient, run_id: str, report: dict[str, Any]) -> str:
    """Record ``report`` under run ``run_id``: summary metrics, per-image histories, the whole report as
    ``fhe_check/<parameters>.json`` and a one-line tag. Returns the artifact's path in the run."""
    prefix = f"fhe_check/{report['params']}/"
    now = int(time.time() * 1000)
    metrics = [Metric(prefix + k, v, now, 0) for k, v in summary(report).items()]
    for r in report["results"]:
        metrics += [Metric(f"{prefix}image_{k}", float(r[k]), now, int(r["index"])) for k in _PER_IMAGE]
    client.log_batch(run_id, metrics=metrics)
    artifact = f"fhe_check/{report['params']}.json"
    client.log_dict(run_id, report, artifact)
    agree = sum(r["agrees"] for r in report["results"])
    client.set_tag(run_id, CHECK_TAG, f"{agree}/{len(report['results'])} images agree under {report['params']}"
                   + ("" if report["secure"] else " (INSECURE test parameters)"))
    return artifact
