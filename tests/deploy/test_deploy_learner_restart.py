"""The learner survives (issue 11 item 5), end to end: `rlef launch` with real actors, executors and a 2-rank
torchrun learner; torchrun is SIGKILLed after two batches, before any checkpoint (the issue's worst case: the
restarted learner comes back at version 0 while the actor holds version 2). The launcher restarts it with
--resume auto, the actor (never restarted) re-bases onto version 0, and the run reaches its configured end
with every rollout id trained at most once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import is_alive
from rlef.deploy.process import descendants

ROOT = Path(__file__).resolve().parents[2]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _batches(run_dir: Path) -> list[dict]:
    path = run_dir / "learner" / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


#: Enough batches that the rollouts spooled before the kill cannot finish the run on their own: the restarted hub
#: re-admits whatever the actor had sent (18 in one run here), and with 4 batches of 4 that covered the whole rest
#: of the run, so the actor was told to stop before it ever heard of the restart and the re-base went untested.
MAX_BATCHES, BATCH = 12, 4


@pytest.mark.slow
def test_learner_killed_before_its_first_checkpoint_is_restarted_and_actors_rebase(tmp_path: Path, tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "rlef.common.cli", "launch", "--config", "configs/tiny-cpu.yaml", "--free-ports",
           "--progress", "log", "--no-report", f"run.output_dir={tmp_path}", "run.name=restart",
           f"model.path={tiny_model_dir}", f"deploy.max_batches={MAX_BATCHES}", f"learner.batch_rollouts={BATCH}",
           "actor.episodes_in_flight=4", "actor.sampling.max_new_tokens=32", "learner.checkpoint.every_batches=100",
           "deploy.final_evaluation.enabled=false"]  # fmt: skip
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "restart"
    seen: set[int] = set()
    killed = None
    deadline = time.monotonic() + 600
    try:
        while launcher.poll() is None and time.monotonic() < deadline:
            seen |= descendants(launcher.pid)
            if killed is None and len(_batches(run_dir)) >= 2:
                agents = [pid for pid in descendants(launcher.pid) if "torch.distributed.run" in _cmdline(pid)]
                assert len(agents) == 1, agents
                killed = agents[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.5)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
    out = launcher.communicate(timeout=120)[0]
    assert killed is not None, out[-3000:]
    assert launcher.returncode == 0, out[-4000:]
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["ended_by"] == "learner-0" and status["exit_code"] == 0
    assert status["processes"]["learner-0"]["restarts"] == 1
    assert status["processes"]["actor-0"]["restarts"] == 0  # the same actor lived across the restart
    # The run reached its configured end; batches lost with the crash were rolled back, none listed twice.
    batches = _batches(run_dir)
    assert [b["batch"] for b in batches] == list(range(1, MAX_BATCHES + 1))
    ids = [rid for b in batches for rid in b["rollout_ids"]]
    assert len(ids) == len(set(ids)) == MAX_BATCHES * BATCH
    rolled_back = (run_dir / "learner" / "batches-rolled-back.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in rolled_back][:2] == [1, 2]
    learner_log = (run_dir / "logs" / "learner-0.log").read_text()
    assert "--resume auto" in learner_log and "Address already in use" not in learner_log
    readmitted = [int(m) for m in re.findall(r"(\d+) spooled rollouts re-admitted", learner_log)]
    assert len(readmitted) == 2 and readmitted[1] < MAX_BATCHES * BATCH, readmitted  # the run needed the actor again
    actor_log = (run_dir / "logs" / "actor-0.log").read_text()
    # The restarted hub may already have trained a batch or two from the spool when the actor hears of it.
    rebased = re.findall(r"re-based onto the restarted hub's version (\d+)", actor_log)
    assert "the hub restarted" in actor_log and len(rebased) == 1 and int(rebased[0]) < MAX_BATCHES, actor_log[-3000:]
    assert seen and not [pid for pid in seen if is_alive(pid)]
