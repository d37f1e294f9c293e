"""The backbone store: trained backbones kept once under ``storage/backbones/<key>/`` and reused, each with the
validation accuracies its trial reported while training it (:func:`network_reports`).

Training is the expensive part of a trial and conversion the cheap part, so every trial that samples the
same training settings loads the backbone the first one trained; a file lock makes concurrent trials wait
for it. The key hashes only what changes the weights: the :class:`~pann.training.TrainConfig` fields that
differ from their defaults (so adding a field with a default keeps every stored key), with the pretrained
weights by content, under a format version.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from ray import tune

from pann.data import NUM_CLASSES
from pann.files import write_bytes_atomic
from pann.models.builders import Classifier, build_model, save_weights
from pann.training.trainer import TrainConfig, train

KEY_VERSION = 2
_NOT_WEIGHTS = ("data_dir", "device")  # where data lives or runs does not change the weights
_STATE_FILE = "training_state.pt"
_BACKBONE_FILE = "backbone.pt"
_REPORTS_FILE = "reports.json"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def backbone_key(config: TrainConfig) -> str:
    """A stable key of what determines the trained weights (16 hex digits)."""
    defaults = TrainConfig()
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in _NOT_WEIGHTS and v != getattr(defaults, k)}
    for name in ("pretrained", "initial"):  # the weights, not the path they were read from
        if settings.get(name):
            settings[name] = file_digest(settings[name])
    text = json.dumps({"version": KEY_VERSION, **settings}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _restore_training_state(state_dir: Path) -> int:
    """Copy the training state of Tune's last checkpoint (after a retry) to ``state_dir``, with the reports kept
    in it when they are this network's (a retry's, not those of a member this trial copies); its epoch, or 0."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / _STATE_FILE, state_dir / _STATE_FILE)
        reports = Path(folder) / _REPORTS_FILE
        if reports.is_file() and json.loads(reports.read_text())["network"] == state_dir.parent.name:
            shutil.copy(reports, state_dir / _REPORTS_FILE)
    return int(torch.load(state_dir / _STATE_FILE, weights_only=True)["epoch"])


def record_report(state_dir: Path, epoch: int, accuracy: float) -> None:
    """Note an epoch's validation accuracy in the training state ``state_dir`` (before it is checkpointed: a
    retried trial keeps its network's reports). A report of an epoch replaces those of it and after it."""
    path = state_dir / _REPORTS_FILE
    reports = json.loads(path.read_text())["epochs"] if path.is_file() else {}
    reports = {k: v for k, v in reports.items() if int(k) < epoch} | {str(epoch): accuracy}
    write_bytes_atomic(path, json.dumps({"network": state_dir.parent.name, "epochs": reports}).encode())


def network_reports(path: Path | None) -> list[float]:
    """The validation accuracies reported while the backbone at ``path`` trained, by epoch: those of its own
    network (a population's member that took over another's network starts a new list); empty for a backbone
    not trained in a trial."""
    reports = Path(path).parent / _REPORTS_FILE if path else None
    if reports is None or not reports.is_file():
        return []
    epochs = json.loads(reports.read_text())["epochs"]
    return [accuracy for _, accuracy in sorted((int(epoch), accuracy) for epoch, accuracy in epochs.items())]


EpochReport = Callable[[Classifier, int, dict, Path], None]


def _train_into(config: TrainConfig, path: Path, report: EpochReport) -> int:
    """Train ``config`` into ``path``; after each epoch ``report(model, epoch, metrics, state_dir)``, whose
    ``state_dir`` (beside ``path``, emptied first: a killed attempt may have left one) holds the training state to
    checkpoint, and the reports :func:`record_report` notes there, kept beside ``path`` once trained. Returns the
    epoch resumed from: that of Tune's checkpoint, after a retry or, under population-based training, of the member
    this trial copies (trained at other alphas)."""
    state_dir = path.parent / "training"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    resumed_from = _restore_training_state(state_dir)
    model = build_model(config.model, NUM_CLASSES[config.dataset])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        # The state's keys are the backbone's: leakage modules replacing ReLUs hold no parameters.
        model.load_state_dict(torch.load(state_dir / _STATE_FILE, weights_only=True)["model"])
        report(model, epoch, metrics, state_dir)

    try:
        result = train(config, checkpoint=state_dir / _STATE_FILE, callback=on_epoch, progress=False,
                       other_approximation=True)
        if (state_dir / _REPORTS_FILE).is_file():
            shutil.copy(state_dir / _REPORTS_FILE, path.parent / _REPORTS_FILE)
        save_weights(result.model, path, config=dataclasses.asdict(config), history=result.history)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return resumed_from


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone as a trial got it: the model, its weights file, whether this trial trained it and from
    which epoch it resumed."""

    model: Classifier
    path: Path | None
    trained: bool = False
    resumed_from: int = 0


def stored_backbone(store: Path, config: TrainConfig, key: str | None = None,
                    report: EpochReport | None = None) -> Backbone:
    """The backbone of ``config`` from ``store``, trained there first (under a lock) if it is missing.

    Without ``report`` (outside a trial) it never trains: a missing backbone is a ``FileNotFoundError``.
    """
    folder = store / (key or backbone_key(config))
    path = folder / _BACKBONE_FILE
    trained, resumed_from = False, 0
    if report is not None:
        with locked(folder.with_suffix(".lock")):
            if not path.is_file():
                resumed_from = _train_into(config, path, report)
                trained = True
    if not path.is_file():
        raise FileNotFoundError(f"backbone {path} is not in the store")
    return Backbone(build_model(config.model, NUM_CLASSES[config.dataset], path), path, trained, resumed_from)
