"""Asynchrony against synchronous training on the main job, in one invocation (issue: learning proof).

Runs ``rlef launch`` on configs/tiny-cpu.yaml twice for the same wall-clock budget: once with
``staleness.max_async_level=0`` (synchronous: an actor starts no episode while the hub is
ahead of its weights, the learner drops anything stale) and once with the config's default lag. Each run is
stopped after ``--minutes`` (SIGINT to the launcher: the learner writes a final checkpoint), its final
checkpoint is exported and evaluated on the held-out test split (1@3, ``--limit`` problems, local sandboxes).

Printed, per mode and as the ratio async / sync: episodes/s trained, learner updates per minute, held-out 1@3
at equal wall clock, and each role's idle fraction read from the run's metrics log (learner: time waiting
for rollouts / wall; actor: 1 - engine busy / wall; executors: 1 - busy sandbox-seconds / (sandboxes x wall)).

    .venv/bin/python bench/bench_async.py --minutes 6 --limit 64
    .venv/bin/python bench/bench_async.py --minutes 4 --tasks one-convention

The held-out 1@3 half of the comparison needs runs that learn within the budget. The learning proof's tasks
take off after a plateau of 20-55 batches that varies by seed and run, so a few minutes of either mode usually
compare two warm starts; ``--tasks one-convention`` generates ``rlef data make-feedback-tasks --held-out-inputs
--conventions 1`` tasks (every problem wants one convention: the reward rises within about 5 batches, the task
of CI's reward test) so that the 1@3 at equal wall clock measures how much each mode learned, not whether a
plateau happened to end.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rlef(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlef.common.cli", *args]


def last_values(path: Path) -> dict[str, float]:
    """The newest value of every key in one metrics log file."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.update({k: v for k, v in rec["values"].items() if v is not None})
    return out


def _sum(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k == prefix or k.startswith(prefix + "{"))


def run_mode(name: str, overrides: list[str], minutes: float, out: Path, limit: int) -> dict[str, float]:
    run_dir = out / name
    cmd = rlef("launch", "--config", "configs/tiny-cpu.yaml", "--free-ports", "--progress", "log", f"run.output_dir={out}",
               f"run.name={name}", "deploy.max_batches=100000", "deploy.final_evaluation.enabled=false",
               "monitoring.episode_samples.rate=0.0", *overrides)
    print(f"{name}: {' '.join(cmd[3:])}", flush=True)
    started = time.monotonic()
    with open(out / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=180)
    wall = time.monotonic() - started
    learner = last_values(run_dir / "metrics" / "learner-rank0.jsonl")
    actor = last_values(run_dir / "metrics" / "actor-0.jsonl")
    executor = {}
    for f in (run_dir / "metrics").glob("executor-*.jsonl"):
        if "broker" not in f.name:
            executor.update(last_values(f))
    batches = [json.loads(x) for x in (run_dir / "learner" / "batches.jsonl").read_text().splitlines()]
    updates = batches[-1]["step"] if batches else 0
    trained = sum(len(b["rollout_ids"]) for b in batches)
    subprocess.run(rlef("export", "latest", str(run_dir / "final-model"), "--config", str(run_dir / "config.yaml")),
                   cwd=ROOT, check=True, capture_output=True)
    eval_dir = out / f"{name}-eval"
    subprocess.run(rlef("evaluate", "--config", str(run_dir / "config.yaml"), "--model", str(run_dir / "final-model"),
                        "--split", "test", "--limit", str(limit), "-R", "1", "--executors", "1", "--output", str(eval_dir)),
                   cwd=ROOT, check=True, capture_output=True)
    one_at_three = json.loads((eval_dir / "evaluation.json").read_text())["estimates"]["1@3"]["mean"]
    sandboxes = 2  # executor.workers of configs/tiny-cpu.yaml
    return {
        "wall_s": wall,
        "episodes_per_s": trained / wall,
        "updates_per_min": updates / (wall / 60),
        "held_out_1at3": one_at_three,
        "idle/learner": _sum(learner, "rlef_learner_wait_rollouts_seconds_total") / wall,
        "idle/actor": 1 - _sum(actor, "rlef_actor_engine_busy_seconds_total") / wall,
        "idle/executor": 1 - _sum(executor, "rlef_executor_job_duration_seconds_sum") / (sandboxes * wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget of each mode")
    ap.add_argument("--limit", type=int, default=64, help="held-out test problems evaluated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rlef-bench-async"))
    ap.add_argument("--tasks", default=None, help="'one-convention' (generate --conventions 1 tasks in OUT) or a task "
                    "directory (default: the config's data.path)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common: list[str] = []
    if args.tasks == "one-convention":
        tasks = args.out / "one-convention-tasks"
        subprocess.run(rlef("data", "make-feedback-tasks", str(tasks), "--seed", "0", "--held-out-inputs", "--conventions", "1",
                            "--if-stale"),
                       cwd=ROOT, check=True, capture_output=True)
        common.append(f"data.path={tasks}")
    elif args.tasks:
        common.append(f"data.path={Path(args.tasks).resolve()}")
    modes = {"sync": ["staleness.max_async_level=0", *common], "async": common}
    results = {name: run_mode(name, o, args.minutes, args.out, args.limit) for name, o in modes.items()}
    keys = list(results["sync"])
    print(f"{'figure':<22}{'sync':>12}{'async':>12}{'async/sync':>12}")
    for k in keys:
        s, a = results["sync"][k], results["async"][k]
        print(f"{k:<22}{s:>12.3f}{a:>12.3f}{(a / s if s else float('nan')):>12.2f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
