"""How `make bench` judges a goal (tests/bench/record.py), on synthetic samples with known answers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from record import Goal, Row, excess_sum_ci, judge


def spread(center: float, n: int = 60, width: float = 0.02) -> list[float]:
    """n samples evenly around `center` (a tight, known median)."""
    return [center + width * (i / (n - 1) - 0.5) for i in range(n)]


GOAL = Goal("echo", "echo at most 1.2x raw", "echo", "front end", "ratio_max", 1.2, "raw",
            floors=("protocol alone", "owner hop alone"))


def row(front: float, protocol: float, hop: float) -> dict[str, Row]:
    samples = {"raw": spread(1.0), "front end": spread(front), "protocol alone": spread(protocol),
               "owner hop alone": spread(hop)}
    return {"echo": Row("echo", "echo", "ms", samples)}


def test_verdicts_follow_the_interval() -> None:
    assert judge(GOAL, row(1.1, 1.05, 1.05))["verdict"] == "met"
    assert judge(GOAL, row(1.5, 1.05, 1.05))["verdict"] == "missed"
    wide = row(1.2, 1.05, 1.05)
    assert judge(GOAL, wide)["verdict"] == "undecided"


def test_each_floor_is_reported_with_its_interval() -> None:
    result = judge(GOAL, row(1.6, 1.18, 1.21))
    floors = {f["variant"]: f for f in result["floors"]}
    assert set(floors) == {"protocol alone", "owner hop alone"}
    assert abs(floors["protocol alone"]["value"] - 1.18) < 0.01
    low, high = floors["owner hop alone"]["ci95"]
    assert low <= floors["owner hop alone"]["value"] <= high


def test_costs_paid_in_turn_add_up() -> None:
    """Two floors of 1.18x and 1.21x: a path paying both is at least 1.39x, which no 1.2x limit
    admits. (Taking the larger floor instead of the sum makes this fail: 1.21 looks reachable.)"""
    result = judge(GOAL, row(1.6, 1.18, 1.21))
    bound = result["bound"]
    assert abs(bound["value"] - 1.39) < 0.01
    assert bound["ci95"][0] > 1.2
    assert bound["reachable"] is False
    cheap = judge(GOAL, row(1.1, 1.05, 1.08))["bound"]
    assert abs(cheap["value"] - 1.13) < 0.01 and cheap["reachable"] is True


def test_excess_sum_of_one_part_is_its_ratio() -> None:
    point, low, high, paired = excess_sum_ci([spread(1.3)], spread(1.0))
    assert abs(point - 1.3) < 0.01 and low <= point <= high and paired == 0  # no rounds given


def test_a_missing_floor_is_left_out() -> None:
    rows = row(1.6, 1.18, 1.21)
    del rows["echo"].samples["protocol alone"]
    result = judge(GOAL, rows)
    assert [f["variant"] for f in result["floors"]] == ["owner hop alone"]
    assert "bound" not in result


def test_the_least_the_design_can_do_says_whether_the_limit_is_reachable() -> None:
    """A goal's design floor (a bare proxy in the front end's place) at 1.35x: no front end of that
    design can meet 1.2x, and the report says so. At 1.1x it could. Without the floor's samples
    nothing is claimed. (Judging the design floor against the limit with `>=` made this fail.)"""
    import report

    goal = Goal("echo", "echo at most 1.2x raw", "echo", "front end", "ratio_max", 1.2, "raw",
                design_floor="bare proxy")
    samples = {"raw": spread(1.0), "front end": spread(1.6), "bare proxy": spread(1.35)}
    result = judge(goal, {"echo": Row("echo", "echo", "ms", samples)})
    least = result["design_floor"]
    assert least["variant"] == "bare proxy" and abs(least["value"] - 1.35) < 0.01 and least["ci95"][0] > 1.2
    assert least["reachable"] is False
    line = report.goal_lines({"goals": [result]}, False)[0]
    assert "bare proxy) 1.35" in line and "no front end in its own Python process can meet the limit" in line
    samples["bare proxy"] = spread(1.1)
    cheap = judge(goal, {"echo": Row("echo", "echo", "ms", samples)})
    assert cheap["design_floor"]["reachable"] is True
    assert "can meet the limit" not in report.goal_lines({"goals": [cheap]}, False)[0]
    del samples["bare proxy"]
    assert "design_floor" not in judge(goal, {"echo": Row("echo", "echo", "ms", samples)})


def drifting(ratio: float, rounds: int = 30, block: int = 1) -> dict[str, list[float]]:
    """Samples of a machine whose speed swings by up to 4x from round to round, while within a round
    "front end" stays `ratio` times "raw" (give or take 1%)."""
    raw: list[float] = []
    front: list[float] = []
    for i in range(rounds):
        load = 1.0 + 3 * ((i * 7919) % 100) / 100  # 1.0 to 4.0, in no order
        for k in range(block):
            wobble = 1 + ((i * 31 + k * 17) % 21 - 10) / 1000
            raw.append(load * wobble)
            front.append(load * ratio / wobble)
    return {"raw": raw, "front end": front}


def test_rounds_are_compared_in_pairs() -> None:
    """A machine whose load swings from round to round hides a 1.1x front end from a comparison of
    the two samples apart (undecided at 1.2x), but not from one that compares each round's pair.
    (Judging rows as if they had no rounds makes this fail: the verdict stays undecided.)"""
    goal = Goal("echo", "echo at most 1.2x raw", "echo", "front end", "ratio_max", 1.2, "raw")
    for block in (1, 5):
        samples = drifting(1.1, block=block)
        apart = judge(goal, {"echo": Row("echo", "echo", "ms", samples)})
        assert apart["verdict"] == "undecided" and "paired_rounds" not in apart
        paired = judge(goal, {"echo": Row("echo", "echo", "ms", samples, rounds=30)})
        assert paired["verdict"] == "met" and paired["paired_rounds"] == 30
        assert abs(paired["value"] - 1.1) < 0.01
        assert paired["ci95"][1] - paired["ci95"][0] < 0.02


def test_samples_that_do_not_cut_into_rounds_are_compared_apart() -> None:
    samples = drifting(1.1)
    samples["front end"] = samples["front end"][:-1]  # one sample short: no pairs to make
    result = judge(GOAL, {"echo": Row("echo", "echo", "ms", samples, rounds=30)})
    assert "paired_rounds" not in result and result["verdict"] == "undecided"


def test_a_few_rounds_are_not_paired() -> None:
    """Two rounds make two pairs: a bootstrap over them would claim a tight interval."""
    samples = drifting(1.1, rounds=2, block=5)
    result = judge(GOAL, {"echo": Row("echo", "echo", "ms", samples, rounds=2)})
    assert "paired_rounds" not in result
