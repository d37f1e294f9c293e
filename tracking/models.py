"""A search's answer as an MLflow model: logged under the search's parent run, registered under its name."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def log_answer_model(tracking_uri: str, run_id: str, model, example: np.ndarray, name: str,
                     tags: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """Log ``model`` (a torch module) with its signature, an input example and the PANN ``spec`` as an
    extra file under run ``run_id``, register it as ``name`` with ``tags`` on the new version, and return
    the ``models:/name/version`` URI that :func:`mlflow.pytorch.load_model` takes.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
            spec_file = Path(folder) / "pann_spec.json"
            spec_file.write_text(json.dumps(spec, indent=1))
            info = mlflow.pytorch.log_model(
                model, name="answer_model", signature=infer_signature(example, output), input_example=example,
                extra_files=[str(spec_file)], registered_model_name=name, serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pann"])
        version = info.registered_model_version
        client = mlflow.MlflowClient(tracking_uri)
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))
        return f"models:/{name}/{version}"
    finally:
        mlflow.set_tracking_uri(previous)
