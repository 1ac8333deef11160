"""benchmarks/compare.py over several rounds: tables show each level's median round, and a target is
judged on the median of the rounds' own ratios, each taken within its round."""

from collections import Counter

import pytest

from benchmarks.compare import median_rounds, targets
from benchmarks.load import LoadResult

pytestmark = pytest.mark.fast


def result(level: int, req_s: float, p50_ms: float = 10.0) -> LoadResult:
    return LoadResult(level, 1, seconds=10.0, statuses=Counter({200: round(req_s * 10)}),
                      latencies=[p50_ms / 1000] * 3)


def one_round(ours: float, litserve: float, flask: float) -> dict[str, list[LoadResult]]:
    return {"ours": [result(32, ours)], "litserve-int8": [result(32, litserve)], "flask-int8": [result(32, flask)]}


def test_each_level_shows_its_median_round_a_real_measurement():
    rounds = [one_round(100, 100, 80), one_round(90, 100, 80), one_round(120, 100, 80)]
    assert median_rounds(rounds)["ours"][0].req_s == 100
    assert median_rounds(rounds[:2])["ours"][0].req_s == 90  # even count: the lower middle one


def test_a_target_is_the_median_of_ratios_taken_within_each_round():
    # The machine slows by half in round 2: ours and the peers alike, so the ratio holds there.
    rounds = [one_round(95, 100, 80), one_round(45, 50, 40), one_round(80, 100, 120)]
    what, measured, target, met = next(row for row in targets(rounds, [32], None) if row[0].startswith("c=32: ours /"))
    assert what == "c=32: ours / best same-model peer"
    assert measured == "0.90x (median of 0.95x litserve-int8, 0.90x litserve-int8, 0.67x flask-int8)"
    assert (target, met) == (">= 0.90x", True)
    # Medians of req/s taken across rounds apart would say 80 / 100 = 0.80x, and miss the target.
    series = median_rounds(rounds)
    assert series["ours"][0].req_s / max(series[peer][0].req_s for peer in ("litserve-int8", "flask-int8")) == 0.8


def test_one_round_shows_its_own_ratio_and_best_peer():
    rows = targets([one_round(85, 100, 80)], [32], None)
    assert ("c=32: ours / best same-model peer", "0.85x (litserve-int8)", ">= 0.90x", False) in rows
