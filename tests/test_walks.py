"""The per-layer walks (greedy, best-first), driven by a known accuracy function (no Ray cluster needed)."""

import pytest

from pann.conversion.groups import LayerGroups
from search.space import alpha_key, param_space, uniform_points
from search.strategies.best_first import BestFirstWalk
from search.strategies.greedy import GreedyWalk
from search.strategies.walk import FINISHED
from tests.helpers import LADDER, accuracy, drive, edge, uneven


def make(**kwargs) -> GreedyWalk:
    return GreedyWalk(["a", "b", "c"], [4, 5, 6, 7, 8], {g: alpha_key(g) for g in "abc"}, 0.9,
                        fixed={"scope": "layer"}, **kwargs)


def test_greedy_lowers_each_group_while_the_target_holds():
    searcher = make()
    asked = drive(searcher)
    uniform = [p for p in asked if len({p[alpha_key(g)] for g in "abc"}) == 1]
    assert [p[alpha_key("a")] for p in uniform[:2]] == [8, 7]  # descends until a uniform alpha misses
    assert all(p["scope"] == "layer" for p in asked)
    assert searcher.current == {"a": 7, "b": 5, "c": 4}  # the per-layer optimum of this accuracy
    assert searcher.retired == {"a", "b"}
    assert accuracy({alpha_key(g): a for g, a in searcher.current.items()}) >= 0.9


def test_greedy_gives_the_same_answer_with_concurrent_trials():
    searcher = make()
    drive(searcher, concurrency=2)
    assert searcher.current == {"a": 7, "b": 5, "c": 4}


def test_greedy_steps_down_a_ladder_of_fractional_alphas_one_rung_at_a_time():
    searcher = GreedyWalk(["a", "b", "c"], [8, 5.625, 4, 7, 6, 5], {g: alpha_key(g) for g in "abc"}, 0.9)
    asked = drive(searcher, score=lambda p: 0.95 - 0.1 * sum(max(0, need - p[alpha_key(g)]) * 2
                                                             for g, need in {"a": 7, "b": 5.6, "c": 0}.items()))
    assert searcher.current == {"a": 7, "b": 5.625, "c": 4}
    steps = {p[alpha_key("c")] for p in asked}
    assert steps == {8, 7, 6, 5.625, 5, 4}  # every rung on the way down, none between them


def test_greedy_walk_does_not_depend_on_which_trial_finishes_first():
    def run(concurrency: int, finishing: int) -> GreedyWalk:
        searcher = GreedyWalk(list("abcdef"), LADDER, {g: alpha_key(g) for g in "abcdef"}, 0.88)
        drive(searcher, concurrency, score=edge, finishing=finishing)
        return searcher

    one_at_a_time = run(1, 0)
    assert one_at_a_time.current == {"a": 6, "b": 6, "c": 6, "d": 6, "e": 7, "f": 7}  # the walk went somewhere
    for concurrency, finishing in ((2, 0), (2, -1), (3, -1), (4, 0)):
        searcher = run(concurrency, finishing)
        assert (searcher.current, searcher.retired) == (one_at_a_time.current, one_at_a_time.retired), \
            (concurrency, finishing)


def test_best_first_spends_the_accuracy_on_the_cheapest_steps_and_the_round_robin_does_not():
    keys = {g: alpha_key(g) for g in "abcd"}
    best_first = BestFirstWalk(list("abcd"), LADDER, keys, 0.897)
    asked = drive(best_first, score=lambda p: 0.95 - uneven(p), loss=uneven)
    # Uniform 7 loses 2.7 points, 6 misses (5.4). From 7: "c" and "d" to the bottom (0.8) and "b" three rungs
    # (1.5) leave 0.3 points, less than a rung of "b" or of "a".
    assert [p[keys["a"]] for p in asked[:3]] == [8, 7, 6]
    assert best_first.current == {"a": 7, "b": 5, "c": 4, "d": 4}
    round_robin = GreedyWalk(list("abcd"), LADDER, keys, 0.897)
    drive(round_robin, score=lambda p: 0.95 - uneven(p))
    # Round robin keeps the first step it tries, of "a" at once: it spends 2 points on one rung and stops higher.
    assert round_robin.current["a"] == 6
    assert sum(round_robin.current.values()) > sum(best_first.current.values())


def test_best_first_walk_does_not_depend_on_which_trial_finishes_first():
    def run(concurrency: int, finishing: int) -> BestFirstWalk:
        searcher = BestFirstWalk(list("abcdef"), LADDER, {g: alpha_key(g) for g in "abcdef"}, 0.88,
                                   concurrency=concurrency)
        drive(searcher, concurrency, score=edge, finishing=finishing, loss=lambda p: 1 - edge(p))
        return searcher

    one_at_a_time = run(1, 0)
    assert one_at_a_time.current != dict.fromkeys("abcdef", 7)  # the walk went somewhere
    for concurrency, finishing in ((2, 0), (2, -1), (3, -1), (4, 0)):
        assert run(concurrency, finishing).current == one_at_a_time.current, (concurrency, finishing)


def test_best_first_finishes_at_once_when_no_uniform_alpha_is_feasible():
    searcher = BestFirstWalk(["a"], [4, 5], {"a": "alpha"}, 0.99, concurrency=2)
    asked = drive(searcher, concurrency=2, score=lambda point: 0.95, loss=lambda point: 1.0)
    assert [p["alpha"] for p in asked] == [5, 4]  # the second uniform point was in flight when the first missed
    assert searcher.suggest("late") == FINISHED and searcher.current is None


def test_greedy_finishes_at_once_when_no_uniform_alpha_is_feasible():
    searcher = GreedyWalk(["a"], [4, 5], {"a": "alpha"}, 0.99)
    asked = drive(searcher, score=lambda point: 0.95)
    assert [p["alpha"] for p in asked] == [5]
    assert searcher.suggest("late") == FINISHED


def test_uniform_warm_start_points_and_per_group_space():
    groups = LayerGroups("stage", {"stem": ["net_relu"], "layer1": ["x", "y"]})
    space = {"alpha": {"low": 6, "high": 8}, "scope": ["layer"]}
    assert uniform_points(space, groups) == [{"alpha.stem": a, "alpha.layer1": a} for a in (8, 7, 6)]
    assert uniform_points(space, LayerGroups("network", {"network": ["net_relu"]})) == []
    domains = param_space(space, groups)
    assert set(domains) == {"alpha.stem", "alpha.layer1", "scope"}
    assert (domains["alpha.stem"].lower, domains["alpha.stem"].upper) == (6, 9)


def test_confirmation_candidates_are_every_feasible_point_cheapest_first_once_each():
    from search.answer import _candidates
    from tracking.front import Point

    points = [Point("uniform", 9.0, 0.93, 9, params={"alpha": 9, "optuna_trial": 0}, costs={"bootstraps": 54}),
              Point("mixed", 8.2, 0.925, 9, params={"alpha.a": 8}, costs={"bootstraps": 50}),
              Point("dominated", 8.9, 0.924, 9, params={"alpha.a": 9, "alpha.b": 8}, costs={"bootstraps": 52}),
              # a neighbour measured again in another trial
              Point("again", 9.0, 0.93, 9, params={"alpha": 9, "optuna_trial": 3}, costs={"bootstraps": 54}),
              Point("too-low", 6.0, 0.80, 6, params={"alpha": 6}, costs={"bootstraps": 20})]
    ordered = _candidates(points, 0.92, "bootstraps", limit=20)
    assert [p.trial for p in ordered] == ["mixed", "dominated", "uniform"]
    assert [p.trial for p in _candidates(points, 0.92, "bootstraps", limit=2)] == ["mixed", "dominated"]


def test_best_first_walk_saved_halfway_and_restored_ends_where_it_would_have(tmp_path):
    keys = {g: alpha_key(g) for g in "abcd"}
    whole = BestFirstWalk(list("abcd"), LADDER, keys, 0.897, concurrency=2)
    drive(whole, 2, score=lambda p: 0.95 - uneven(p), loss=uneven)
    first = BestFirstWalk(list("abcd"), LADDER, keys, 0.897, concurrency=2)
    for number in range(12):  # one at a time: twelve proposals and their results
        point = first.suggest(f"t{number}")
        first.on_trial_complete(f"t{number}", {"final": 1, "accuracy": 0.95 - uneven(point), "loss": uneven(point)})
    first.save(str(tmp_path / "searcher.pkl"))
    restored = BestFirstWalk(list("abcd"), LADDER, keys, 0.0)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.target == 0.897 and restored.proposals == first.proposals
    drive(restored, 2, score=lambda p: 0.95 - uneven(p), loss=uneven)
    assert restored.current == whole.current == {"a": 7, "b": 5, "c": 4, "d": 4}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_lowering_walk_is_the_greedy_walk_each_step_starting_from_the_network_it_lowers(concurrency):
    from search.strategies.lowering import LoweringWalk

    keys = {g: alpha_key(g) for g in "abc"}
    trained = lambda point: {"backbone": "store/" + "-".join(str(point[keys[g]]) for g in "abc") + ".pt"}  # noqa: E731
    greedy = drive(GreedyWalk(["a", "b", "c"], [4, 5, 6, 7, 8], keys, 0.9, {"epochs": 2}), concurrency,
                   extra=trained)
    walk = LoweringWalk(["a", "b", "c"], [4, 5, 6, 7, 8], keys, 0.9, {"epochs": 2})
    lowering = drive(walk, concurrency, extra=trained)
    assert [{k: v for k, v in p.items() if k != "initial"} for p in lowering] == greedy
    uniform = [p for p in lowering if len({p[keys[g]] for g in "abc"}) == 1]
    assert uniform and all("initial" not in p for p in uniform)  # from the pretrained backbone
    for point in lowering:
        if "initial" in point:
            # One group one rung lower than the point whose trained weights it starts from.
            parent = [float(a) for a in point["initial"].removeprefix("store/").removesuffix(".pt").split("-")]
            lowered = [(parent[i], point[keys[g]]) for i, g in enumerate("abc") if parent[i] != point[keys[g]]]
            assert len(lowered) == 1 and lowered[0][1] == lowered[0][0] - 1
    assert walk.current == {"a": 7, "b": 5, "c": 4}
