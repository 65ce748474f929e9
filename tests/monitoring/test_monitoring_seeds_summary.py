"""The learning proof's table over seeds (rlef.monitoring.seeds_summary) from real comparison files."""

from __future__ import annotations

import json
from pathlib import Path

from rlef.actor.compare import compare_reports
from rlef.actor.evaluation_scores import EpisodeSummary, aggregate
from rlef.monitoring.seeds_summary import summary

SETTINGS = {"model": "m", "dataset": "codecontests", "split": "test", "rollouts_per_problem": 1, "max_turns": 3,
            "temperature": 0.2, "top_p": 0.95, "test_set": "all"}
IDS = ["test-00000-sum-square-hidden", "test-00001-product-bang-shown"]
WRONG3 = ("wrong_answer",) * 3
BASE = aggregate(SETTINGS, IDS, [EpisodeSummary(IDS[0], WRONG3, False), EpisodeSummary(IDS[1], ("pass",), True)])
BETTER = aggregate(SETTINGS, IDS, [EpisodeSummary(IDS[0], ("wrong_answer", "pass"), True), EpisodeSummary(IDS[1], ("pass",), True)])
BETTER_RANDOM = BASE


def test_table_has_a_row_per_seed_and_says_when_one_is_missing(tmp_path: Path) -> None:
    result = compare_reports({"warm-start": {"real": BASE, "random": BASE}, "rlef": {"real": BETTER, "random": BETTER_RANDOM}})
    (tmp_path / "seed-0" / "eval").mkdir(parents=True)
    (tmp_path / "seed-0" / "eval" / "comparison.json").write_text(json.dumps(result))
    (tmp_path / "seed-0" / "timing.json").write_text(json.dumps({"seed": 0, "warm_start_s": 300, "train_and_eval_s": 600}))
    text = summary(tmp_path, ["0", "1"])
    row0 = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    # warm 1@3 50%, RLEF 100%: +50 points; RLEF real - random +50; warm start real - random 0; 15 minutes.
    assert "| 50.0 [" in row0 and "| 100.0 [" in row0 and "+50.0 [" in row0 and "+0.0 [" in row0
    assert row0.rstrip(" |").endswith("15.0")
    assert "| 1 | no evaluation" in text


def test_training_figure_reads_each_seeds_learner_log_in_batch_order(tmp_path: Path) -> None:
    from rlef.monitoring.metrics_log import MetricsLog
    from rlef.monitoring.seeds_summary import batch_series, training_figure

    log = MetricsLog(tmp_path / "seed-0" / "metrics" / "learner-0.jsonl", role="learner", process_id=0)
    for batch, solve in enumerate([0.5, 0.25, 0.75]):
        log.write(batch, {"solve_rate/final": solve, "fix_rate/turn_1_failures": solve / 2})
        log.write(batch, {"weights/sync_seconds": 0.1})  # records without the key are skipped, not zeros
    log.close()
    assert batch_series(tmp_path / "seed-0", "solve_rate/final", "fix_rate/turn_1_failures") == [
        [0.5, 0.25, 0.75], [0.25, 0.125, 0.375]]
    assert batch_series(tmp_path / "seed-1", "solve_rate/final") == [[]]
    figure = training_figure(tmp_path, ["0", "1"])
    assert figure == tmp_path / "seeds-training.png" and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert training_figure(tmp_path, ["1"]) is None
