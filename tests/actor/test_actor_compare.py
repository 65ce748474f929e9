"""rlef evaluate --compare: the side-by-side aggregation (pure) against hand-computed references."""

from __future__ import annotations

import pytest

from rlef.actor.compare import compare_reports, comparison_markdown, fix_rate
from rlef.actor.evaluation_scores import EpisodeSummary, aggregate

SETTINGS = {"model": "m", "dataset": "codecontests", "split": "test", "rollouts_per_problem": 2, "max_turns": 3,
            "temperature": 0.2, "top_p": 0.95, "test_set": "all"}
IDS = ["test-00000-sum-square-hidden", "test-00001-product-bang-shown", "test-00002-larger-hash-hidden"]


def _ep(pid: str, statuses: tuple[str, ...], correct: bool) -> EpisodeSummary:
    return EpisodeSummary(pid, statuses, correct)


def _report(episodes):
    return aggregate(SETTINGS, IDS, episodes)


BASE = _report([
    _ep(IDS[0], ("wrong_answer", "wrong_answer", "wrong_answer"), False), _ep(IDS[0], ("wrong_answer", "pass"), True),
    _ep(IDS[1], ("pass",), True), _ep(IDS[1], ("pass",), True),
    _ep(IDS[2], ("wrong_answer", "wrong_answer", "wrong_answer"), False), _ep(IDS[2], ("wrong_answer",) * 3, False),
])
BETTER = _report([
    _ep(IDS[0], ("wrong_answer", "pass"), True), _ep(IDS[0], ("wrong_answer", "pass"), True),
    _ep(IDS[1], ("pass",), True), _ep(IDS[1], ("pass",), True),
    _ep(IDS[2], ("wrong_answer", "pass"), True), _ep(IDS[2], ("wrong_answer", "wrong_answer", "pass"), True),
])
BETTER_RANDOM = _report([
    _ep(IDS[0], ("wrong_answer",) * 3, False), _ep(IDS[0], ("wrong_answer",) * 3, False),
    _ep(IDS[1], ("pass",), True), _ep(IDS[1], ("pass",), True),
    _ep(IDS[2], ("wrong_answer",) * 3, False), _ep(IDS[2], ("wrong_answer", "pass"), True),
])


def test_rows_differences_and_kinds():
    result = compare_reports({"warm": {"real": BASE}, "rlef": {"real": BETTER, "random": BETTER_RANDOM}})
    rows, diffs = result["rows"], result["differences"]
    # 1@3 = solve rate of one rollout per problem: base (0.5 + 1 + 0) / 3; better 1.
    assert rows["warm/real"]["1@3"]["mean"] == pytest.approx(0.5)
    assert rows["rlef/real"]["1@3"]["mean"] == pytest.approx(1.0)
    assert rows["rlef/random"]["1@3"]["mean"] == pytest.approx((0 + 1 + 0.5) / 3)
    # First turn only needs three first turns per problem (single-turn 1@3): two rollouts buy no estimate.
    assert rows["rlef/real"]["1@3 first turn"] is None
    assert rows["rlef/real"]["by_kind"]["hidden"]["mean"] == pytest.approx(1.0)
    assert rows["warm/real"]["by_kind"]["hidden"]["mean"] == pytest.approx(0.25)
    assert rows["warm/real"]["fix_rate"] == {"failed_first": 4, "fixed": 1, "rate": 0.25}
    assert diffs["rlef - warm (real feedback)"]["mean"] == pytest.approx(0.5)
    assert diffs["rlef: real - random feedback"]["mean"] == pytest.approx(1.0 - 0.5)
    assert "warm: real - random feedback" not in diffs  # no random run for the warm start
    md = comparison_markdown(result, {"dataset": "codecontests", "split": "test", "problems": 3, "rollouts": 2,
                                      "max_turns": 3, "temperature": 0.2, "top_p": 0.95})
    assert "| rlef | random |" in md and "| rlef - warm (real feedback) | +50.0 |" in md


def test_fix_rate_without_first_turn_failures():
    assert fix_rate([{"turn": 1, "episodes": 2, "status": {"pass": 2}, "fixed_later": {}, "fixed_later_correct": {}}])["failed_first"] == 0
    assert fix_rate([]) is None
