"""The README's main job for real: `rlef launch` with the tiny CPU config, every role a real process.

Asserts the learner stepped (its batches log, metrics log and checkpoints), the run ended by the learner with
exit code 0 after deploy.max_batches, no process of the run is left behind, every role wrote the metrics log,
the actor sampled episodes, and the report was made from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers.processes import is_alive, run_watching_descendants
from rlef.deploy.progress import learner_progress

ROOT = Path(__file__).resolve().parents[2]



@pytest.mark.slow
def test_rlef_launch_tiny_run_trains_and_ends_cleanly(tmp_path: Path, tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "rlef.common.cli", "launch", "--config", "configs/tiny-cpu.yaml", "--free-ports",
           "--progress", "log", f"run.output_dir={tmp_path}", "run.name=e2e", f"model.path={tiny_model_dir}",
           "deploy.max_batches=2", "learner.batch_rollouts=8", "monitoring.episode_samples.rate=1.0",
           # The final evaluation (warm start vs final checkpoint, real and random feedback) on 3 test problems.
           "deploy.final_evaluation.enabled=true", "deploy.final_evaluation.limit=3",
           "deploy.final_evaluation.rollouts_per_problem=3", "actor.sampling.max_new_tokens=32"]  # fmt: skip
    returncode, out, seen = run_watching_descendants(cmd, ROOT, timeout_s=540)
    run_dir = tmp_path / "e2e"
    assert returncode == 0, out[-4000:]
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["ended_by"] == "learner-0" and status["exit_code"] == 0
    batches = [json.loads(line) for line in (run_dir / "learner" / "batches.jsonl").read_text().splitlines()]
    assert [b["batch"] for b in batches] == [1, 2]
    assert batches[0]["step"] < batches[1]["step"] and len(batches[1]["rollout_ids"]) == 8
    assert learner_progress(run_dir).step == batches[1]["step"]
    assert any((run_dir / "checkpoints").iterdir())
    assert {p.name for p in (run_dir / "logs").glob("*.log")} >= {"learner-0.log", "actor-0.log", "executor-0.log", "executor-broker-0.log"}
    assert seen and not [pid for pid in seen if is_alive(pid)]
    # The monitoring role's `rlef report RUN_DIR` ran at the end.
    assert (run_dir / "logs" / "report.log").exists() and any((run_dir / "report").iterdir())
    # Every role wrote the run's metrics log, so the report finds the actor, executor and lag series there.
    logs = {p.name for p in (run_dir / "metrics").glob("*.jsonl")}
    assert {"learner-0.jsonl", "actor-0.jsonl", "executor-broker-broker.jsonl"} <= logs, logs
    assert [name for name in logs if name.startswith("executor-") and not name.startswith("executor-broker")], logs
    summary = (run_dir / "report" / "summary.md").read_text()
    for series in ("Rollouts per second: sent by actors", "Tokens per second: generated",
                   "Executor tests per second: all statuses", "Policy lag: max actor lag"):
        assert f"| {series} | metrics log |" in summary, series
    # The actor's sampled episodes, also in the report.
    assert list((run_dir / "samples" / "actor-0").glob("episodes-*.jsonl"))
    assert "## Sampled episodes" in summary and "episode(s) sampled by 1 actor(s)" in summary
    # The final evaluation compared the warm start (model.path) and the exported final checkpoint.
    comparison = json.loads((run_dir / "eval" / "comparison.json").read_text())
    assert set(comparison["rows"]) == {"warm-start/real", "warm-start/random", "rlef/real", "rlef/random"}
    assert comparison["settings"]["problems"] == 3 and comparison["settings"]["split"] == "test"
    assert (run_dir / "final-model" / "model.safetensors").is_file()
    assert "## Learning: before and after RLEF" in summary and "eval_comparison.png" in summary
