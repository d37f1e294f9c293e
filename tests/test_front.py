import csv
import json
import logging
import re
import subprocess
import sys

import pytest

from tracking.front import Point, lowest_precision, pareto_front
from tracking.front_export import export_front

TARGET = 0.9


def point(trial: str, alpha: float, accuracy: float, depth: int = 4, **params) -> Point:
    return Point(trial=trial, alpha=alpha, accuracy=accuracy, depth=depth, params=params)


# a: cheapest feasible; b: more accurate at higher alpha; c: dominated by b; d: cheapest of all, but infeasible
POINTS = [point("b", 10, 0.95, lr=0.1), point("a", 8, 0.91, lr=0.2, wd=1e-4), point("c", 12, 0.93),
          point("d", 6, 0.89)]


def test_front_drops_dominated_and_infeasible_points():
    front = pareto_front(POINTS, TARGET)
    assert [p.trial for p in front] == ["a", "b"]


def test_infeasible_points_excluded_though_cheaper():
    points = [point("x", 8, 0.91, depth=4), point("y", 4, 0.899, depth=2)]
    assert pareto_front(points, 0.9) == [points[0]]
    assert pareto_front(points, 0.9, with_depth=True) == [points[0]]
    assert pareto_front(points, 0.85) == [points[1], points[0]]


def test_front_sorted_by_alpha_then_accuracy_and_keeps_first_duplicate():
    points = [point("late", 9, 0.97), point("first", 7, 0.92), point("copy", 7, 0.92), point("mid", 8, 0.95)]
    assert [p.trial for p in pareto_front(points, TARGET)] == ["first", "mid", "late"]


def test_depth_objective_keeps_shallower_point():
    points = [point("cheap", 8, 0.92, depth=6), point("shallow", 9, 0.92, depth=3), point("deep", 9, 0.92, depth=7)]
    assert [p.trial for p in pareto_front(points, TARGET)] == ["cheap"]
    assert [p.trial for p in pareto_front(points, TARGET, with_depth=True)] == ["cheap", "shallow"]


def test_lowest_precision_tie_breaking():
    points = [point("worse", 7, 0.91, depth=2), point("deep", 7, 0.95, depth=6), point("best", 7, 0.95, depth=5),
              point("costly", 9, 0.99, depth=1), point("infeasible", 5, 0.5)]
    assert lowest_precision(points, TARGET).trial == "best"
    assert lowest_precision([point("low", 5, 0.5)], TARGET) is None
    assert lowest_precision([], TARGET) is None


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, 90])
def test_target_outside_unit_interval_rejected(target):
    with pytest.raises(ValueError, match="target"):
        pareto_front(POINTS, target)
    with pytest.raises(ValueError, match="target"):
        lowest_precision(POINTS, target)


def test_export_csv(tmp_path):
    path = tmp_path / "out" / "front.csv"
    front = export_front(path, POINTS, TARGET)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["trial", "alpha", "accuracy", "depth", "run_id", "param.lr", "param.wd"]
    assert [r[0] for r in rows[1:]] == [p.trial for p in front] == ["a", "b"]
    assert rows[1][1:] == ["8", "0.91", "4", "", "0.2", "0.0001"]
    assert rows[2][-1] == ""


def test_export_json(tmp_path):
    path = tmp_path / "front.json"
    export_front(path, [*POINTS, Point("r", 7, 0.92, 5, run_id="abc", params={"lr": 0.3})], TARGET)
    data = json.loads(path.read_text())
    assert data["target"] == TARGET and data["points"] == 5
    assert data["front"][0] == {"trial": "r", "alpha": 7, "accuracy": 0.92, "depth": 5, "run_id": "abc",
                                "params": {"lr": 0.3}, "costs": {}}
    assert [p["trial"] for p in data["front"]] == ["r", "b"]


def test_export_png(tmp_path):
    path = tmp_path / "front.png"
    export_front(path, POINTS, TARGET, title="search")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def hover_texts(page: str) -> list[tuple[str, dict]]:
    """(group, hover) of every point of the embedded plotly figure; a hover is Optuna's JSON with <br> breaks."""
    start = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page).end()
    traces, _ = json.JSONDecoder().raw_decode(page, start)
    return [(re.sub(r".*<extra>(.*)</extra>", r"\1", trace.get("hovertemplate", "")),
             json.loads(text.replace("<br>", "\n"))) for trace in traces for text in trace.get("text") or []]


@pytest.mark.parametrize("with_depth", [False, True])
def test_export_html(tmp_path, with_depth):
    import plotly

    path = tmp_path / "front.html"
    # f is beaten by b and e in alpha and accuracy, but is the shallowest
    points = [Point(p.trial, p.alpha, p.accuracy, p.depth, f"run-{p.trial}", p.params)
              for p in [*POINTS, point("e", 11, 0.96, depth=2, note="a&b"), point("f", 12, 0.94, depth=1)]]
    front = export_front(path, points, TARGET, title="my <search>", with_depth=with_depth)
    assert [p.trial for p in front] == ["a", "b", "e", "f"][:3 + with_depth]
    page = path.read_text()
    assert f"plotly.js v{plotly.offline.get_plotlyjs_version()}" in page  # embedded: opens offline
    assert "<script src=" not in page
    hovers = hover_texts(page)
    assert sorted(h["user_attrs"]["mlflow_run_id"] for _, h in hovers) == sorted(f"run-{p.trial}" for p in points)
    assert sorted(h["user_attrs"]["trial"] for group, h in hovers if group == "Best Trial") == [p.trial for p in front]
    assert {h["user_attrs"]["trial"] for group, h in hovers if group == "Infeasible Trial"} == {"d"}
    a = next(h for _, h in hovers if h["user_attrs"]["trial"] == "a")
    assert a["values"][:2] == [8, 91] and a["params"] == {"lr": 0.2, "wd": 1e-4}
    assert "target 90%" in page and "my &lt;search&gt;" in page and "my <search>" not in page


def test_unknown_suffix_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"'\.txt'.*\.csv, \.json, \.png, \.html"):
        export_front(tmp_path / "sub" / "front.txt", POINTS, TARGET)
    assert list(tmp_path.iterdir()) == []


def test_export_overwrites_without_leftovers(tmp_path):
    path = tmp_path / "front.json"
    export_front(path, POINTS, TARGET)
    export_front(path, POINTS[:1], TARGET)
    assert json.loads(path.read_text())["points"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["front.json"]


@pytest.mark.parametrize("points", [[], [point("low", 8, 0.5)]])
def test_empty_front_exports(tmp_path, points):
    assert export_front(tmp_path / "f.csv", points, TARGET) == []
    assert (tmp_path / "f.csv").read_text().strip() == "trial,alpha,accuracy,depth,run_id"
    export_front(tmp_path / "f.json", points, TARGET)
    assert json.loads((tmp_path / "f.json").read_text())["front"] == []
    export_front(tmp_path / "f.png", points, TARGET)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    records = []  # what Optuna logs while the page is drawn (its logger does not propagate to pytest's)
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        export_front(tmp_path / "f.html", points, TARGET)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert "target 90%" in (tmp_path / "f.html").read_text()
    # No feasible point is the page's own news: Optuna's plot does not also warn of it on the console.
    assert not [r for r in records if "feasible" in r.getMessage()]


# `pann pareto --run-id` on a real MLflow store ------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> tuple[str, dict[str, str]]:
    """An embedded MLflow store holding two finished searches, 'a' (target 75%) and 'b' (target 60%),
    of one trial each; the parent and trial run ids by name."""
    from tracking.recorder import SearchRecorder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for name, target, curve in (("a", 0.75, {6: 0.5, 7: 0.8}), ("b", 0.6, {5: 0.7, 8: 0.9})):
        recorder = SearchRecorder(uri, "pann-search")
        ids[name] = recorder.start_search(name, {"target_accuracy": target})
        ids[f"{name}1"] = recorder.start_trial(f"{name}1", {"alpha": 7})
        recorder.log_curve(f"{name}1", [{"alpha": a, "accuracy": acc, "depth": 2 * a} for a, acc in curve.items()])
        recorder.finish_trial(f"{name}1", "FINISHED")
        recorder.finish_search()
    return uri, ids


def pann_pareto(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", "pareto", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_pareto_command_by_run_id(store, tmp_path):
    uri, ids = store
    out = tmp_path / "front.json"
    result = pann_pareto("--run-id", ids["b"], "--out", str(out), "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["target"] == 0.6 and data["points"] == 2  # b's own target, b's points only
    assert [(p["alpha"], p["accuracy"], p["run_id"]) for p in data["front"]] == [(5, 0.7, ids["b1"]),
                                                                                 (8, 0.9, ids["b1"])]
    # Several run ids merge their searches; the target is the first one's (a: 75%, which b's alpha 5 misses).
    result = pann_pareto("--run-id", ids["a"], "--run-id", ids["b"], "--out", str(out), "--tracking-uri", uri,
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 front points of 4 measured, target 75.00%" in result.stdout
    data = json.loads(out.read_text())
    assert [(p["trial"], p["alpha"]) for p in data["front"]] == [("a1", 7), ("b1", 8)]


@pytest.mark.parametrize("which,message", [("missing", "no run '0123456789abcdef0123456789abcdef'"),
                                           ("a1", "is not the parent run of a search")])
def test_pareto_command_rejects_a_run_that_is_no_search(store, tmp_path, which, message):
    uri, ids = store
    run_id = ids.get(which, "0123456789abcdef0123456789abcdef")
    result = pann_pareto("--run-id", run_id, "--out", str(tmp_path / "f.csv"), "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "f.csv").exists()


def test_front_against_a_network_cost(tmp_path):
    # Per-layer points: a lower mean alpha can still need more bootstraps; the front follows the x asked for.
    points = [Point("u8", 8.0, 0.92, 8, costs={"bootstraps": 18, "levels": 192}),
              Point("mix", 7.4, 0.915, 8, costs={"bootstraps": 19, "levels": 180}),
              Point("cheap", 7.8, 0.91, 8, costs={"bootstraps": 14, "levels": 170}),
              Point("bad", 6.0, 0.80, 6, costs={"bootstraps": 8, "levels": 120})]
    by_bootstraps = pareto_front(points, 0.9, x="bootstraps")
    assert [p.trial for p in by_bootstraps] == ["cheap", "u8"]  # "mix" costs more and is less accurate than "u8"
    assert [p.trial for p in pareto_front(points, 0.9)] == ["mix", "u8"]  # by mean alpha "cheap" is dominated
    assert lowest_precision(points, 0.9, x="levels").trial == "cheap"
    path = tmp_path / "front.csv"
    export_front(path, points, 0.9, x="bootstraps")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:6] == ["trial", "alpha", "accuracy", "depth", "bootstraps", "levels"]
    with pytest.raises(ValueError, match="has no bootstraps recorded"):
        pareto_front(POINTS, TARGET, x="bootstraps")
