"""A search's answer: its measured points, the validation front, the cheapest front point confirmed on
images no trial saw, its test accuracy, and what the parent run records of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from pann.approximation.catalog import relu_for_precision
from pann.conversion.flow import prepare
from pann.cost.network import level_trace, network_cost
from pann.cost.objectives import COST_METRICS
from pann.cost.preset import load_preset
from pann.data import NUM_CLASSES
from pann.models.builders import build_model
from search.callback import run_key, search_params
from search.config import SearchConfig
from search.config_checks import CONTINUES, LINEAGE, TRAINING_SEED
from search.space import group_alphas
from search.trial import answer_pann, backbone_for, measure, splits_for
from tracking.answer_model import log_answer_model
from tracking.answer_picture import answer_picture
from tracking.front import Point, pareto_front
from tracking.front_export import export_front
from tracking.recorder import SearchRecorder

logger = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """What a search found: the cheapest feasible point confirmed on held-out images (None if none), the
    validation front, every measured point and the candidates checked on the confirmation images."""

    answer: Point | None
    front: list[Point]
    points: list[Point]
    test_accuracy: float | None
    parent_run_id: str
    trials: int
    backbone_trainings: int
    confirmation_accuracy: float | None = None
    checked: list[tuple[Point, float]] = field(default_factory=list)


def _points(results, run_ids: dict[str, str]) -> list[Point]:
    """The measured points of the finished trials (a curve's alphas at granularity network), with run ids."""
    points = []
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get("final"):
            continue
        params = {**(result.config or {}), "backbone": metrics["backbone"]}
        run_id = run_ids.get(run_key(params, metrics["trial_id"]))
        for p in json.loads(metrics["curve"]):
            point_params = {**params, "alpha": p["alpha"]} if "alpha" in params else params
            points.append(Point(trial=metrics["trial_id"], alpha=p["alpha"], accuracy=p["accuracy"],
                                depth=p["depth"], run_id=run_id, params=point_params,
                                costs={k: p[k] for k in COST_METRICS if k in p}))
    return points


# A point's parameters that say where it was measured, not what it is: left out when candidates are compared.
_WHERE_MEASURED = ("backbone", "optuna_trial", LINEAGE, CONTINUES, TRAINING_SEED)


def _candidates(points: list[Point], target: float, x: str, limit: int) -> list[Point]:
    """Every validation-feasible point, cheapest first (the front's and the dominated ones: when the front's
    points fail confirmation, a dearer feasible point, such as the uniform one a per-layer search started from,
    may still hold); a configuration measured twice is scored once; at most ``limit`` (``search.confirmations``)."""
    seen, ordered = set(), []
    for point in sorted((p for p in points if p.accuracy >= target), key=lambda p: (p.cost(x), -p.accuracy)):
        key = tuple(sorted((k, str(v)) for k, v in point.params.items() if k not in _WHERE_MEASURED))
        if key not in seen:
            seen.add(key)
            ordered.append(point)
    return ordered[:limit]


def _confirm(search: SearchConfig, groups, points: list[Point]) -> tuple[Point | None, float | None, list]:
    """The first candidate (:func:`_candidates`) that also meets the target on the confirmation images (the
    cheapest feasible point when the search has no confirmation images), and the candidates checked."""
    x = search.cost
    candidates = _candidates(points, search.validation_target, x, search.confirmations)
    if search.confirmation_size == 0:
        return (candidates[0] if candidates else None), None, []
    checked = []
    for point in candidates:
        backbone = backbone_for(search, groups, point.params)
        score = measure(search, groups, point.params, backbone, "confirmation", neighbours=False)[0]["accuracy"]
        checked.append((point, score))
        logger.info("  confirming %s (alpha %.2f): %.2f%% on %d confirmation images", point.trial, point.alpha,
                    100 * score, search.confirmation_size)
        if score >= search.target_accuracy:
            return point, score, checked
    return None, None, checked


def _register(search: SearchConfig, groups, answer: Point, parent_id: str, spec: dict, test_accuracy: float) -> None:
    """The answer as an MLflow model under the parent run, registered under the search's name."""
    pann = answer_pann(search, groups, answer.params)
    example = next(splits_for(search).test.batches(2))[0].numpy()
    uri = log_answer_model(search.tracking_uri, parent_id, pann, example, search.name,
                           {"alpha": answer.alpha, "validation_accuracy": answer.accuracy,
                            "test_accuracy": test_accuracy, "preset": search.preset, **dict(answer.costs)}, spec,
                           NUM_CLASSES[search.dataset])
    logger.info("answer registered as %s", uri)


def _uniform_reference(search: SearchConfig, groups, points: list[Point]) -> Point | None:
    """The cheapest validation-feasible point with one alpha everywhere (what a per-layer answer must beat);
    None at granularity network, where every point is uniform."""
    if groups.per_network:
        return None
    uniform = [p for p in points if p.accuracy >= search.validation_target
               and len(set(group_alphas(p.params, groups).values())) == 1]
    return min(uniform, key=lambda p: (p.cost(search.cost), -p.accuracy), default=None)


def drawn(label: str, alphas: dict[str, float], observed, preset) -> tuple:
    """One network for :func:`tracking.answer_picture.answer_picture`: its alphas by layer, level trace and costs
    under ``preset`` (``observed``: the model prepared for conversion)."""
    approximations = {name: relu_for_precision(a) for name, a in alphas.items()}
    cost = network_cost(observed, preset, approximations)
    return label, alphas, level_trace(observed, preset, approximations), cost.bootstraps, cost.polynomial_levels


def draw_answer(search: SearchConfig, groups, answer: Point, reference: Point | None, path) -> None:
    """The picture of ``answer`` (:func:`tracking.answer_picture.answer_picture`) beside ``reference``."""
    observed = prepare(build_model(search.model, NUM_CLASSES[search.dataset]))
    preset = load_preset(search.preset)
    answer_picture(path, [drawn(f"{label} ({100 * point.accuracy:.2f}% validation)",
                                groups.expand(group_alphas(point.params, groups)), observed, preset)
                          for label, point in (("answer", answer), ("uniform", reference)) if point is not None],
                   f"{search.name}: the answer under {search.preset}")


def outcome(search: SearchConfig, groups, recorder: SearchRecorder, results) -> SearchOutcome:
    parent_id = recorder.start_search(search.name, search_params(search))
    points = _points(results, recorder.trial_run_ids)
    x = search.cost
    front = pareto_front(points, search.validation_target, with_depth=search.depth_objective, x=x)
    answer, confirmation, checked = _confirm(search, groups, points)
    test_accuracy = None
    if answer is not None:
        record = measure(search, groups, answer.params, backbone_for(search, groups, answer.params), "test",
                         neighbours=False)[0]
        test_accuracy = record["accuracy"]
        metrics = {"lowest_alpha": answer.alpha, "answer_validation_accuracy": answer.accuracy,
                   "answer_test_accuracy": test_accuracy, **{f"answer_{k}": v for k, v in answer.costs.items()}}
        if confirmation is not None:
            metrics["answer_confirmation_accuracy"] = confirmation
        for key, value in metrics.items():
            recorder.client.log_metric(parent_id, key, value)
        recorder.log_dict(None, {"alpha": answer.alpha, "validation_accuracy": answer.accuracy,
                                 "confirmation_accuracy": confirmation, "test_accuracy": test_accuracy,
                                 "costs": dict(answer.costs), "preset": search.preset, "depth": answer.depth,
                                 "trial": answer.trial, "config": dict(answer.params)}, "answer.json")
        recorder.log_dict(None, record["spec"], "answer_spec.json")
        _register(search, groups, answer, parent_id, record["spec"], test_accuracy)
        picture = search.run_dir / "answer.png"
        draw_answer(search, groups, answer, _uniform_reference(search, groups, points), picture)
        recorder.client.log_artifact(parent_id, str(picture))
    export_dir = search.run_dir / "pareto"
    for suffix in ("csv", "json", "png", "html"):
        export_front(export_dir / f"front.{suffix}", points, search.validation_target, title=search.name,
                     with_depth=search.depth_objective, x=x)
        recorder.client.log_artifact(parent_id, str(export_dir / f"front.{suffix}"), "pareto")
    trainings = sum(int((r.metrics or {}).get("trained_backbone", 0)) for r in results)
    return SearchOutcome(answer, front, points, test_accuracy, parent_id, len(results), trainings,
                         confirmation, checked)

