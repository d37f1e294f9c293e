"""One trial of a search, as a Ray Tune function trainable.

Training is the expensive part and conversion the cheap part, so a trained backbone is stored once in
``storage/backbones/<key>/``, keyed by its training settings, and every later trial that samples the
same settings loads it instead of training again (a file lock makes concurrent trials wait for the
first). Every report carries ``accuracy``: the PANN's validation accuracy at the sampled alpha, after
each training epoch (what ASHA compares) and once more at the end, when ``final`` is set and the
neighbouring alphas and the post-training correction are measured too.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from ray import tune

from pann.catalog import MAX_ALPHA, MIN_ALPHA, relu_for_precision
from pann.data import ImageSet, NUM_CLASSES, load_dataset, split_train
from pann.evaluate import CurvePoint, accuracy, accuracy_curve, calibrated
from pann.models import build_model, save_weights
from pann.training import TrainConfig, train
from search.config import SearchConfig

_STATE_FILE = "training_state.pt"
_BACKBONE_FILE = "backbone.pt"


def backbone_key(config: TrainConfig) -> str:
    """A stable key of everything that determines the trained weights (not where data lives or runs)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("data_dir", "device")}
    if settings["pretrained"]:  # the weights, not the path they were read from
        settings["pretrained"] = hashlib.sha256(Path(settings["pretrained"]).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclasses.dataclass
class Evaluation:
    """The data a trial measures on: calibration images from the training part, validation images held out."""

    calibration: ImageSet
    validation: ImageSet

    @classmethod
    def for_search(cls, search: SearchConfig) -> Evaluation:
        train_part, validation = split_train(load_dataset(search.dataset, "train", search.data_dir),
                                             search.validation_size, search.training.get("seed", 0))
        if search.validation_from == "test":
            validation = load_dataset(search.dataset, "test", search.data_dir).subset(
                slice(0, search.validation_size))
        return cls(train_part.subset(slice(0, search.calibration_size)), validation)


    def curve(self, backbone: torch.nn.Module, alphas: list[float], point: Mapping[str, Any],
              data: ImageSet | None = None) -> list[CurvePoint]:
        """PANN accuracy of ``backbone`` at ``alphas`` with the point's interval and correction."""
        observed = calibrated(backbone, self.calibration)
        leakage = ([x for x, _ in self.calibration.batches(500)]
                   if point.get("correction", "none") == "compensate" else None)
        return accuracy_curve(observed, self.validation if data is None else data, alphas,
                              point.get("scope", "layer"), point.get("margin", 1.0), compiled=False,
                              progress=False, leakage_batches=leakage)


def test_set(search: SearchConfig) -> ImageSet:
    """The images that score a search's answer: the test set, less those used for validation."""
    test = load_dataset(search.dataset, "test", search.data_dir)
    return test.subset(slice(search.validation_size, None)) if search.validation_from == "test" else test


def neighbourhood(alpha: float, neighbours: int) -> list[float]:
    """``alpha`` and up to ``neighbours`` alphas on each side, within the supported range."""
    return [a for a in (alpha + d for d in range(-neighbours, neighbours + 1)) if MIN_ALPHA <= a <= MAX_ALPHA]


def _restore_training_state(state_dir: Path) -> int:
    """Copy the training state of Tune's last checkpoint (after a retry) to ``state_dir``; its epoch, or 0."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / _STATE_FILE, state_dir / _STATE_FILE)
    return int(torch.load(state_dir / _STATE_FILE, weights_only=True)["epoch"])


def _trained_backbone(config: TrainConfig, path: Path, evaluation: Evaluation, point: Mapping[str, Any],
                      base_metrics: dict[str, Any]) -> int:
    """Train ``config`` into ``path``, reporting every epoch to Tune with a checkpoint; the epoch resumed from."""
    state_dir = Path(tempfile.mkdtemp(prefix="pann-train-"))
    resumed_from = _restore_training_state(state_dir)
    model = build_model(config.model, NUM_CLASSES[config.dataset])

    def report(epoch: int, metrics: dict[str, float]) -> None:
        # The state's keys are the backbone's: leakage modules replacing ReLUs hold no parameters.
        model.load_state_dict(torch.load(state_dir / _STATE_FILE, weights_only=True)["model"])
        pann_accuracy = evaluation.curve(model, [point["alpha"]], {**point, "correction": "none"})[0].accuracy
        tune.report({**base_metrics, "epoch": epoch, "train_loss": metrics["train_loss"],
                     "val_loss": metrics["val_loss"], "backbone_accuracy": metrics["val_accuracy"],
                     "accuracy": pann_accuracy},
                    checkpoint=tune.Checkpoint.from_directory(str(state_dir)))

    try:
        result = train(config, checkpoint=state_dir / _STATE_FILE, callback=report, progress=False)
        save_weights(result.model, path, config=dataclasses.asdict(config), history=result.history)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return resumed_from


def backbone_for(search: SearchConfig, point: Mapping[str, Any], evaluation: Evaluation | None = None,
                 base_metrics: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Path | None, bool, int]:
    """The backbone a point needs: (model, weights file, whether this call trained it, epoch resumed from).

    Called outside a trial (``evaluation=None``), it never trains: the backbone must be in the store.
    """
    config = search.train_config(point)
    num_classes = NUM_CLASSES[search.dataset]
    if config is None:
        return build_model(search.model, num_classes, search.weights), search.weights and Path(search.weights), False, 0
    key = backbone_key(config)
    if not search.reuse_backbones:  # every trial trains its own (to measure what reuse saves)
        key = f"{key}-{search.name}-{point['optuna_trial']}"
    folder = search.backbone_dir / key
    path = folder / _BACKBONE_FILE
    trained, resumed_from = False, 0
    if evaluation is not None:
        with _locked(folder.with_suffix(".lock")):
            if not path.is_file():
                resumed_from = _trained_backbone(config, path, evaluation, point, base_metrics or {})
                trained = True
    if not path.is_file():
        raise FileNotFoundError(f"backbone {path} is not in the store")
    return build_model(search.model, num_classes, path), path, trained, resumed_from


def run_trial(point: dict[str, Any], search: SearchConfig) -> None:
    """Ray Tune trainable: get the backbone, convert it at the sampled alpha (and its neighbours), report."""
    approximation = relu_for_precision(point["alpha"])
    base = {"precision_bits": float(point["alpha"]), "depth": approximation.depth}
    evaluation = Evaluation.for_search(search)
    model, path, trained, resumed_from = backbone_for(search, point, evaluation, base)
    curve = evaluation.curve(model, neighbourhood(point["alpha"], search.neighbours), point)
    main = next(p for p in curve if p.alpha == point["alpha"])
    tune.report({**base, "final": 1, "accuracy": main.accuracy, "out_of_range": main.out_of_range,
                 "backbone_accuracy": accuracy(model, evaluation.validation),
                 "trained_backbone": int(trained), "resumed_from_epoch": resumed_from,
                 "backbone": str(path) if path else "",
                 # JSON text: Tune's loggers take numbers and strings, not lists of records.
                 "curve": json.dumps([p.to_dict() for p in curve])})
