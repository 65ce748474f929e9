"""Chaos (issue 11 item 7): during a short CPU run under `rlef launch`, an actor, the executor, the broker and
the learner's torchrun are each SIGKILLed once, at seeded random times (a random batch to wait for, then a
random delay). The run must reach its configured end (deploy.max_batches, exit 0), every rollout id must be
trained at most once (RUN_DIR/learner/batches.jsonl), and the restarts must show in launch.json and in the
metrics (the surviving actor counted the hub's restart). No episode waits forever: a job lost with the
executor or the broker is answered (requeued, re-sent, or dropped after actor.sandbox_retries) well inside
actor.execution_timeout_s, or the run could not finish."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import is_alive
from rlef.deploy.process import descendants

ROOT = Path(__file__).resolve().parents[2]
SEED = 11
MAX_BATCHES = 12  # long enough that every kill lands mid-run (the kills come after batch 1-3)
# role -> how to recognise its process among the launcher's descendants (cmdline contains all of these)
TARGETS = {
    "actor-1": ("rlef.common.cli actor ", " 1 "),
    "executor-0": ("rlef.common.cli executor ",),
    "executor-broker-0": ("rlef.common.cli executor-broker ",),
    "learner-0": ("torch.distributed.run",),
}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + " "
    except OSError:
        return ""


def _batches(run_dir: Path) -> list[dict]:
    path = run_dir / "learner" / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _find(root: int, needles: tuple[str, ...]) -> int | None:
    """The topmost descendant of ``root`` whose cmdline holds every needle (the role's own process)."""
    found = {pid for pid in descendants(root) if all(n in _cmdline(pid) for n in needles)}
    # A forked helper has its parent's cmdline: keep the process whose parent is not itself a match.
    top = [pid for pid in found if not any(pid in descendants(other) for other in found if other != pid)]
    return min(top) if top else None


@pytest.mark.slow
def test_run_reaches_its_end_while_every_role_is_killed(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(SEED)
    # Each role once: after a random batch (1..3), plus a random delay (0..4 s); in trigger order.
    plan = sorted(((rng.randint(1, 3), rng.uniform(0.0, 4.0), name) for name in TARGETS), key=lambda p: (p[0], p[1]))
    cmd = [sys.executable, "-m", "rlef.common.cli", "launch", "--config", "configs/tiny-cpu.yaml", "--free-ports",
           "--progress", "log", "--no-report", f"run.output_dir={tmp_path}", "run.name=chaos",
           f"model.path={tiny_model_dir}", f"deploy.max_batches={MAX_BATCHES}", "learner.batch_rollouts=4",
           "deploy.actors=2", "actor.episodes_in_flight=3", "actor.sampling.max_new_tokens=32",
           "learner.checkpoint.every_batches=2", "actor.execution_timeout_s=20", "actor.sandbox_retry_backoff_s=0.2",
           "executor.heartbeat_interval_s=0.3", "executor.heartbeat_liveness=3", "executor.workers=2",
           "deploy.final_evaluation.enabled=false", "data.dataset=sample", "data.path=null"]  # fmt: skip
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "chaos"
    seen: set[int] = set()
    killed: list[tuple[str, int, int]] = []  # (name, pid, batches seen when killed)
    most = 0
    due: float | None = None
    deadline = time.monotonic() + 420
    try:
        while launcher.poll() is None and time.monotonic() < deadline:
            seen |= descendants(launcher.pid)
            most = max(most, len(_batches(run_dir)))
            if plan and most >= plan[0][0]:
                due = due if due is not None else time.monotonic() + plan[0][1]
                if time.monotonic() >= due:
                    pid = _find(launcher.pid, TARGETS[plan[0][2]])
                    if pid is not None:  # else the role is between a death and its restart: try again
                        os.kill(pid, signal.SIGKILL)
                        killed.append((plan[0][2], pid, most))
                        plan.pop(0)
                        due = None
            time.sleep(0.2)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
    out = launcher.communicate(timeout=120)[0]
    assert [k[0] for k in killed] and not plan, (killed, plan, out[-3000:])
    assert launcher.returncode == 0, out[-4000:]
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["ended_by"] == "learner-0" and status["exit_code"] == 0
    # The run reached its end, every rollout id trained at most once.
    batches = _batches(run_dir)
    assert [b["batch"] for b in batches] == list(range(1, MAX_BATCHES + 1))
    ids = [rid for b in batches for rid in b["rollout_ids"]]
    assert len(ids) == len(set(ids)) == 4 * MAX_BATCHES
    # Every killed role was restarted (launch.json) ...
    for name, _pid, _at in killed:
        assert status["processes"][name]["restarts"] >= 1, (name, status["processes"][name])
    # ... and the surviving actor's metrics counted the hub's restart.
    last = json.loads((run_dir / "metrics" / "actor-0.jsonl").read_text().splitlines()[-1])
    assert last["values"]["rlef_actor_control_hub_restarts_total"] >= 1
    # A restarted role could bind its ports again (what its dead instance left was killed by the launcher).
    for log in (run_dir / "logs").glob("*.log"):
        assert "Address already in use" not in log.read_text(errors="replace"), log.name
    assert seen and not [pid for pid in seen if is_alive(pid)]
