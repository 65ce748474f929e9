"""`rlef launch` with the optional in-training evaluator (evaluator.enabled): every role a real process; the
evaluator receives the learner's versions, evaluates the valid split every version and marks the best one,
and the run ends cleanly with it (exit 0, no process left)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers.processes import is_alive, run_watching_descendants

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rlef_launch_with_the_evaluator(tmp_path: Path, tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "rlef.common.cli", "launch", "--config", "configs/tiny-cpu.yaml", "--free-ports",
           "--progress", "log", "--no-report", f"run.output_dir={tmp_path}", "run.name=ev", f"model.path={tiny_model_dir}",
           "data.dataset=sample", "data.path=null", "deploy.max_batches=3", "learner.batch_rollouts=8",
           "deploy.final_evaluation.enabled=false", "evaluator.enabled=true", "evaluator.every_versions=1",
           "evaluator.limit=2", "evaluator.rollouts_per_problem=1", "evaluator.nice=0",
           "learner.checkpoint.every_batches=1", "actor.sampling.max_new_tokens=16"]  # fmt: skip
    returncode, out, seen = run_watching_descendants(cmd, ROOT, timeout_s=540)
    run_dir = tmp_path / "ev"
    log = (run_dir / "logs" / "evaluator-0.log").read_text() if (run_dir / "logs" / "evaluator-0.log").exists() else ""
    assert returncode == 0, out[-3000:] + log[-3000:]
    assert seen and not [pid for pid in seen if is_alive(pid)]
    curve = [json.loads(line) for line in (run_dir / "eval" / "curve.jsonl").read_text().splitlines()]
    versions = [p["version"] for p in curve]
    assert versions and versions[0] == 0 and versions == sorted(set(versions)), log[-3000:]
    assert all(p["episodes"] == 2 and "1@3" in p["estimates"] for p in curve)
    best = json.loads((run_dir / "eval" / "best.json").read_text())
    assert best["best"]["version"] in versions and best["latest"]["version"] == versions[-1]
    assert best["final_checkpoint"] and Path(best["final_checkpoint"]).name.startswith("step-")
    assert (run_dir / "eval" / "best-model" / "model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics" / "evaluator-0.jsonl").read_text().splitlines()]
    assert any(r.get("values", {}).get("rlef_evaluator_evaluations_total") == len(curve) for r in records)
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["ended_by"] == "learner-0" and "evaluator-0" in json.dumps(status["processes"])
