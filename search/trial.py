"""One trial of a search, as a Ray Tune function trainable.

A trial gets its backbone (pretrained, or trained once into the backbone store), the backbone's
calibrated activation ranges (computed once per backbone and calibration set, kept beside the store),
converts it with the sampled alpha of every layer group, applies the point's post-training correction, and
reports the PANN's validation accuracy and loss (mean cross-entropy) and its network cost under the search's
CKKS preset. The correction is applied the same way when the answer is confirmed, tested and registered;
batch-norm statistics re-estimated under the PANN travel in its spec. Training trials report after every epoch
too (what ASHA compares); the last report carries ``final``. A point trained at its own alphas
(``leakage_alpha: point``) trains with its polynomials in the loop, and its every B is measured under its PANN
before it is scored (its exact-ReLU version is a different network); with ``search.final_reports`` above 1 its
final accuracy is the mean of its last reports (:func:`final_accuracy`). Post-training trials are cheap: they run
the fused compiled kernels, and a worker process (Tune reuses it) compiles, loads data and calibrates once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import (calibrate, convert, observers, out_of_range_rate, poly_modules, prepare,
                          reset_out_of_range)
from pann.conversion.corrections import CORRECTIONS, CorrectionData, apply_correction, recalibrate_bounds
from pann.cost.preset import load_preset
from pann.data import NUM_CLASSES
from pann.evaluate import accuracies_and_losses, accuracy
from pann.conversion.groups import LayerGroups
from pann.files import write_bytes_atomic
from pann.models.builders import build_model
from pann.conversion.modules import PolyReLU
from pann.cost.network import network_cost
from pann.cost.objectives import COST_METRICS, OBJECTIVES, cost_metrics
from pann.conversion.spec import spec_of
from pann.training.trainer import TrainingDiverged
from search.backbones import (Backbone, backbone_key, file_digest, locked, network_reports, record_report,
                              stored_backbone)
from search.config import SearchConfig
from search.config_checks import LINEAGE
from search.space import group_alphas, neighbourhood
from search.splits import Splits

_memo: dict[Any, Any] = {}  # per worker process: data splits, calibrated ranges, backbone accuracies


def _memoized(key: Any, make):
    if key not in _memo:
        _memo[key] = make()
    return _memo[key]


def _splits_key(search: SearchConfig) -> tuple:
    return (search.dataset, search.data_dir, search.validation_from, search.validation_size,
            search.confirmation_size, search.calibration_size, search.batchnorm_size,
            json.dumps(dict(search.training), sort_keys=True))


def splits_for(search: SearchConfig) -> Splits:
    return _memoized(("splits", *_splits_key(search)), lambda: Splits.for_search(search))


def batchnorm_batches(search: SearchConfig) -> list[torch.Tensor]:
    """The split's batch-norm images with the training augmentation (crop+flip), drawn once with the search's
    seed: every trial, the confirmation, the test and the exported answer re-estimate on the same images."""
    def make() -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(search.seed)
        return [x for x, _ in splits_for(search).batchnorm.batches(500, augment=True, generator=generator)]

    return _memoized(("batchnorm", *_splits_key(search), search.seed), make)


def backbone_for(search: SearchConfig, groups: LayerGroups, point: Mapping[str, Any], report=None) -> Backbone:
    """The backbone a point needs: the pretrained weights, or the store's backbone for its training settings
    (for a point trained at its own alphas, those alphas are training settings). Outside a trial
    (``report=None``) it never trains."""
    at_point = groups.expand(group_alphas(point, groups)) if search.trains_at_point(point) else None
    config = search.train_config(point, at_point)
    if config is None:
        model = build_model(search.model, NUM_CLASSES[search.dataset], search.weights)
        return Backbone(model, Path(search.weights) if search.weights else None)
    if LINEAGE in point:  # a population's member: its own network, continued from the member it copied
        key = f"{backbone_key(config)}-{search.name}-{point[LINEAGE]}"
    else:
        key = None if search.reuse_backbones else \
            f"{backbone_key(config)}-{search.name}-{point['optuna_trial']}"  # every trial trains its own
    return stored_backbone(search.backbone_dir, config, key, report)


def _calibrated_ranges(model: torch.nn.Module, splits: Splits) -> dict[str, float]:
    observed = prepare(model)
    calibrate(observed, (x for x, _ in splits.calibration.batches(500)))
    return {name: float(m.max_abs) for name, m in observers(observed).items()}


def _ranges(backbone: Backbone, splits: Splits, search: SearchConfig) -> dict[str, float]:
    """Each observer's largest |x| on the calibration images, computed once per backbone (kept on disk)."""
    if backbone.path is None:  # a backbone without a file (a training epoch's weights): nothing to key a cache on
        return _calibrated_ranges(backbone.model, splits)
    path = search.backbone_dir / "ranges" / f"{file_digest(backbone.path)[:16]}-{search.calibration_size}.json"

    def compute() -> dict[str, float]:
        with locked(path.with_suffix(".lock")):
            if path.is_file():
                return json.loads(path.read_text())
            ranges = _calibrated_ranges(backbone.model, splits)
            write_bytes_atomic(path, json.dumps(ranges).encode())
            return ranges

    return _memoized(("ranges", str(path)), compute)


def observed_model(backbone: Backbone, splits: Splits, search: SearchConfig) -> torch.nn.Module:
    """The backbone prepared for conversion, with its calibrated ranges (computed or read once per call)."""
    observed = prepare(backbone.model)
    ranges = _ranges(backbone, splits, search)
    for name, module in observers(observed).items():
        module.max_abs = torch.tensor(ranges[name])
    return observed


def correction_data(search: SearchConfig, margin: float = 1.0) -> CorrectionData:
    """What a correction may measure on: the calibration images, the augmented batch-norm images."""
    return CorrectionData(calibration=lambda: (x for x, _ in splits_for(search).calibration.batches(500)),
                          batchnorm=lambda: batchnorm_batches(search), margin=margin)


def build_pann(observed: torch.nn.Module, layer_alphas: Mapping[str, float], point: Mapping[str, Any],
               search: SearchConfig, compiled: bool) -> torch.nn.Module:
    """The PANN of a point: each layer at its alpha, the point's interval scope and margin, and its correction
    (one of :data:`pann.conversion.corrections.CORRECTIONS`, measured on :func:`correction_data`). A network
    trained at its own alphas has its intervals measured under the PANN first: its exact-ReLU version, which
    ``observed`` was calibrated on, is a different network."""
    approximations = {name: relu_for_precision(alpha) for name, alpha in layer_alphas.items()}
    margin = point.get("margin", 1.0)
    pann = convert(observed, approximations, point.get("scope", "layer"), margin, compiled=compiled).eval()
    data = correction_data(search, margin)
    if search.trains_at_point(point):
        recalibrate_bounds(pann, data.calibration(), margin)
    apply_correction(pann, point.get("correction", "none"), data)
    reset_out_of_range(pann)  # count only the scored images
    return pann


def _variants(search: SearchConfig, groups: LayerGroups, point: Mapping[str, Any],
              neighbours: bool) -> list[dict[str, float]]:
    """Per-group alphas to measure: the sampled ones, and, when one group is the whole network, its
    neighbouring alphas."""
    sampled = group_alphas(point, groups)
    if not groups.per_network or not neighbours:
        return [sampled]
    (alpha,) = sampled.values()
    return [groups.uniform(a) for a in neighbourhood(alpha, search.neighbours)]


def measure(search: SearchConfig, groups: LayerGroups, point: Mapping[str, Any],
            backbone: Backbone, data: str = "validation", neighbours: bool = True) -> list[dict[str, Any]]:
    """Accuracy and loss on ``data`` (a split's name) and cost of the point's PANN: one record per variant (the
    neighbouring alphas too at granularity network, unless ``neighbours=False``)."""
    splits = splits_for(search)
    observed = observed_model(backbone, splits, search)
    preset = load_preset(search.preset)
    records, panns = [], []
    for alphas in _variants(search, groups, point, neighbours):
        layer_alphas = groups.expand(alphas)
        pann = build_pann(observed, layer_alphas, point, search, search.compile)
        panns.append(pann)
        records.append({"alpha": sum(layer_alphas.values()) / len(layer_alphas), "group_alphas": alphas,
                        "depth": max(relu_for_precision(a).depth for a in layer_alphas.values()),
                        **cost_metrics(network_cost(pann, preset))})
    correction = point.get("correction", "none")
    for record, pann, (score, loss) in zip(records, panns, accuracies_and_losses(panns, getattr(splits, data))):
        record.update(accuracy=score, loss=loss, out_of_range=out_of_range_rate(pann),
                      spec=spec_of(pann, batchnorm_statistics=CORRECTIONS[correction].carries_batchnorm,
                                   model=search.model,
                                   weights=str(backbone.path or ""), correction=correction,
                                   input_normalization=backbone.model.normalization).to_dict())
    return records


def answer_pann(search: SearchConfig, groups: LayerGroups, point: Mapping[str, Any]) -> torch.nn.Module:
    """The PANN of a point, eager (``compiled=False``: portable, it is pickled into an MLflow model), with its
    correction measured as the trials measured it (on the compiled PANN when the search compiles): the same
    batch-norm statistics as its spec, the same leakage offsets and bounds."""
    observed = observed_model(backbone_for(search, groups, point), splits_for(search), search)
    layer_alphas = groups.expand(group_alphas(point, groups))
    measured = build_pann(observed, layer_alphas, point, search, search.compile)
    if not search.compile:
        return measured
    eager = build_pann(observed, layer_alphas, {**point, "correction": "none"}, search, compiled=False)
    eager.load_state_dict(measured.state_dict())  # the norms' statistics
    for source, target in zip(poly_modules(measured).values(), poly_modules(eager).values()):
        target.bound.copy_(source.bound)  # not in the state dict
        if isinstance(source, PolyReLU):
            target.offset = source.offset
    return eager


def score(search: SearchConfig, accuracy: float, cost: float) -> float:
    """One number that ranks points as the search does (population-based training's metric): below the target
    (``validation_target``) the accuracy, in [0, 1); at or above it ``1 + 1 / (1 + cost)``, in (1, 2]: every
    feasible point above every infeasible one, the cheaper the higher."""
    return 1 + 1 / (1 + cost) if accuracy >= search.validation_target else accuracy


def _costs_and_score(search: SearchConfig, base: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """What every report of a point carries: its mean alpha and depth (``base``), its network costs, its accuracy
    and loss, and :func:`score`."""
    costs = {**base, **{k: record[k] for k in COST_METRICS}}
    return {**costs, "accuracy": record["accuracy"], "loss": record["loss"],
            "score": score(search, record["accuracy"], costs[OBJECTIVES[search.cost].metric])}


def _epoch_reporter(search: SearchConfig, groups, point: Mapping[str, Any], base: dict[str, Any]):
    def report(model, epoch: int, metrics: dict[str, float], state_dir: Path) -> None:
        main = measure(search, groups, {**point, "correction": "none"}, Backbone(model, None))[0]
        record_report(state_dir, epoch, main["accuracy"])
        tune.report({**_costs_and_score(search, base, main), "epoch": epoch, "train_loss": metrics["train_loss"],
                     "val_loss": metrics["val_loss"], "backbone_accuracy": metrics["val_accuracy"]},
                    checkpoint=tune.Checkpoint.from_directory(str(state_dir)))
    return report


# Failures that a retry of the same trial meets again (a diverging seeded training, bad weights or data).
REPEATING_FAILURES = (TrainingDiverged, ValueError)


class TrialCannotSucceed(RuntimeError):
    """A retried trial whose earlier attempt failed in a way that repeats: it stops at once."""


def run_trial(point: dict[str, Any], search: SearchConfig, groups: LayerGroups) -> None:
    """Ray Tune trainable: :func:`measure_point`, except that a failure a retry would meet again is noted,
    and the retry Tune starts for it (``budget.max_failures``) stops at once instead of running again."""
    note = search.run_dir / "failures" / f"{tune.get_context().get_trial_id()}.txt"
    if note.is_file():
        raise TrialCannotSucceed(f"not run again: its first attempt failed with {note.read_text()}")
    try:
        measure_point(point, search, groups)
    except REPEATING_FAILURES as exc:
        write_bytes_atomic(note, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}".encode())
        raise


def final_accuracy(search: SearchConfig, point: Mapping[str, Any], backbone: Backbone, measured: float) -> float:
    """The validation accuracy a trial ends with: ``measured`` (its network's, as it ends), or for a network trained
    at its own alphas the mean of the last ``search.final_reports`` accuracies reported while it trained, the last of
    them ``measured`` (fewer when the network has fewer: a member that took over another's network lately). One
    report moves by a few tenths of a point from epoch to epoch; the mean ranks networks on less of that noise."""
    if search.final_reports == 1 or not search.trains_at_point(point):
        return measured
    reports = network_reports(backbone.path)[:-1][-(search.final_reports - 1):] + [measured]
    return sum(reports) / len(reports)


def measure_point(point: dict[str, Any], search: SearchConfig, groups: LayerGroups) -> None:
    """Get the backbone, convert it with the point's alphas, report accuracy and cost."""
    sampled = group_alphas(point, groups)
    layer_alphas = groups.expand(sampled)
    base = {OBJECTIVES["alpha"].metric: sum(layer_alphas.values()) / len(layer_alphas),
            "depth": max(relu_for_precision(a).depth for a in sampled.values())}
    backbone = backbone_for(search, groups, point, _epoch_reporter(search, groups, point, base))
    records = measure(search, groups, point, backbone)
    main = next(r for r in records if r["group_alphas"] == sampled)
    last = main["accuracy"]
    main["accuracy"] = final_accuracy(search, point, backbone, last)
    splits = splits_for(search)
    backbone_accuracy = _memoized(("backbone_accuracy", str(backbone.path), backbone.trained),
                                  lambda: accuracy(backbone.model, splits.validation))
    curve = [{k: v for k, v in r.items() if k not in ("spec", "group_alphas")} for r in records]
    tune.report({**_costs_and_score(search, base, main), "final": 1, "last_accuracy": last,
                 "out_of_range": main["out_of_range"],
                 "backbone_accuracy": backbone_accuracy, "trained_backbone": int(backbone.trained),
                 "resumed_from_epoch": backbone.resumed_from, "backbone": str(backbone.path or ""),
                 # JSON text: Tune's loggers take numbers and strings, not lists of records.
                 "curve": json.dumps(curve), "spec": json.dumps(main["spec"])})
