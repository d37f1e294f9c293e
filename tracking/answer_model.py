"""A search's answer as an MLflow model that loads without unpickling anything.

The model folder holds the PANN spec (JSON) and one tensor file, read with ``torch.load(weights_only=True)``: the
PANN's state dict and the per-channel leakage offsets a ``compensate`` correction measured. MLflow loads it through
this module (the ``loader_module`` of MLflow's python_function flavour), which rebuilds the network with the
model's builder and :func:`pann.conversion.spec.apply`; no code travels with the model.

>>> pann = mlflow.pyfunc.load_model("models:/NAME/1").get_raw_model()   # the PANN, a torch module
>>> logits = mlflow.pyfunc.load_model("models:/NAME/1").predict(images)   # numpy in, numpy out

Logging and registering go through an explicit :class:`mlflow.MlflowClient`: no global tracking URI or active run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARTIFACT", "log_answer_model"]

ARTIFACT = "answer_model"  # the model's folder under the search's parent run
_SPEC, _STATE = "pann_spec.json", "pann_state.pt"


def _save_data(folder: Path, model, spec: Mapping[str, Any], num_classes: int) -> None:
    import torch

    from pann.conversion.flow import poly_modules

    folder.mkdir(parents=True)
    (folder / _SPEC).write_text(json.dumps(spec, indent=1))
    offsets = {name: m.offset.detach().clone() for name, m in poly_modules(model).items()
               if getattr(m, "offset", None) is not None}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"num_classes": num_classes, "state_dict": state, "offsets": offsets}, folder / _STATE)


def log_answer_model(tracking_uri: str, run_id: str, model, example: np.ndarray, name: str,
                     tags: Mapping[str, Any], spec: Mapping[str, Any], num_classes: int) -> str:
    """Log ``model`` (a PANN built from ``spec``, eager) under run ``run_id`` as :data:`ARTIFACT`, with its
    signature and an input example, register it as ``name`` with ``tags`` on the new version, and return the
    ``models:/name/version`` URI."""
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    client = mlflow.MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        data, saved = Path(folder) / "data", Path(folder) / ARTIFACT
        _save_data(data, model, spec, num_classes)
        mlflow.pyfunc.save_model(str(saved), loader_module=__name__, data_path=str(data),
                                 signature=infer_signature(example, output), input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pann"])
        client.log_artifacts(run_id, str(saved), ARTIFACT)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"runs:/{run_id}/{ARTIFACT}", run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()})
    return f"models:/{name}/{version.version}"


class _AnswerModel:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict`` (images in [0, 1], NCHW float32 -> logits) and
    ``get_raw_model`` (the PANN as a torch module)."""

    def __init__(self, module):
        self.module = module

    def predict(self, model_input, params=None):
        import torch

        with torch.no_grad():
            return self.module(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()

    def get_raw_model(self):
        return self.module


def load_pann(data_path: str):
    """The PANN of a model folder's data: built with its model's builder, its spec applied, its state loaded
    (``weights_only=True``), its leakage offsets set."""
    import torch

    from pann.conversion import spec as pann_spec
    from pann.conversion.flow import poly_modules, prepare
    from pann.models.builders import build_model

    folder = Path(data_path)
    spec = pann_spec.from_dict(json.loads((folder / _SPEC).read_text()), str(folder / _SPEC))
    saved = torch.load(folder / _STATE, map_location="cpu", weights_only=True)
    model = build_model(spec.meta["model"], saved["num_classes"])
    pann = pann_spec.apply(prepare(model), spec, compiled=False)
    pann.load_state_dict(saved["state_dict"], strict=True)
    for name, module in poly_modules(pann).items():
        if name in saved["offsets"]:
            module.offset = saved["offsets"][name]
    return pann.eval()


def _load_pyfunc(data_path: str) -> _AnswerModel:  # MLflow's loader_module entry point
    return _AnswerModel(load_pann(data_path))
