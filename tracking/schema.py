"""What a search's records look like in MLflow, for the writer (:mod:`tracking.recorder`) and the readers
(:mod:`tracking.records`): one parent run per search (tag ``pann.search``), one nested child run per trial (tag
``pann.trial_id``), and how values become MLflow params and metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Param

SEARCH_TAG = "pann.search"
TRIAL_TAG = "pann.trial_id"
BACKBONE_TAG = "pann.backbone"
ERROR_TAG = "pann.error"
CURVE_PREFIX = "curve_"  # metric histories with step = alpha: the accuracy-vs-alpha curve and its costs
CURVE_ACCURACY = "curve_accuracy"


def param_values(values: Mapping[str, Any]) -> dict[str, str]:
    """Values as MLflow params (lists and mappings as JSON)."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in values.items()}


def metric_values(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values``, as MLflow metrics (booleans, text and NaN left out)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def param(key: str, value: str) -> Param:
    return Param(key, value[:6000])
