"""Training a backbone for its PANN: the training config, the loop, the mitigation techniques (leakage
treatments, noise, random slopes, approximation-aware ReLUs with a precision schedule), distillation,
checkpoints, and the sturdiness of the result.

Imports :mod:`pann.approximation`, :mod:`pann.conversion` and :mod:`pann.models`.
"""

from pann.training.checkpoints import CheckpointError
from pann.training.config import ConfigError, TrainConfig
from pann.training.trainer import TrainingDiverged, TrainResult, evaluate_loss_accuracy, train

__all__ = ["CheckpointError", "ConfigError", "TrainConfig", "TrainResult", "TrainingDiverged",
           "evaluate_loss_accuracy", "train"]
