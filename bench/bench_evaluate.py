"""Evaluation throughput against the actor's training-mode throughput, same model, problems and sampling.

    .venv/bin/python bench/bench_evaluate.py [--model /tmp/ws1 --tasks /tmp/ft0] [--problems 8] [--rollouts 6] [--rounds 2]

Both are the real commands as processes against one real executor service (broker + executor, 2 nsjail
workers): ``rlef actor --dry-run --episodes P*R`` (training mode: the problem stream, the runner, rollouts
written as JSONL instead of pushed to a hub) and ``rlef evaluate -R R --limit P`` (evaluation mode: the same
runner, each problem R times, final programs on all test sets, the append-only episodes file). Same config,
split (``valid``), problems and sampling (the config's: ``--temperature`` / ``--top-p`` given to evaluate so
its protocol does not change them). Each command reports its own episode wall time (model load excluded):
the actor's summary line, evaluate's ``settings.seconds``. Rounds alternate; the best of each is kept.
Printed: rollouts/s of each, turns per episode, and evaluation / training (it is the same machinery: near 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RLEF = str(Path(sys.executable).with_name("rlef"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _training(overrides: list[str], episodes: int, out: Path) -> dict:
    out.unlink(missing_ok=True)
    done = subprocess.run([RLEF, "actor", "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--dry-run", "--output", str(out),
                           "--episodes", str(episodes), *overrides], capture_output=True, text=True, env=ENV, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"rlef actor failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    m = re.search(r"(\d+) episodes in ([\d.]+) s", done.stdout)
    turns = [len(json.loads(line)["turns"]) for line in out.read_text().splitlines()]
    return {"episodes": int(m.group(1)), "seconds": float(m.group(2)), "turns": sum(turns) / len(turns)}


def _evaluation(overrides: list[str], problems: int, rollouts: int, out: Path, temperature: float, top_p: float) -> dict:
    done = subprocess.run([RLEF, "evaluate", "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--split", "valid",
                           "--limit", str(problems), "-R", str(rollouts), "--temperature", str(temperature), "--top-p", str(top_p),
                           "--output", str(out), "--fresh", "--probe-timeout", "60", *overrides],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"rlef evaluate failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    data = json.loads((out / "evaluation.json").read_text())
    episodes = sum(p["rollouts"] for p in data["problems"])
    return {"episodes": episodes, "seconds": data["settings"]["episode_seconds"], "turns": sum(t["episodes"] for t in data["turns"]) / episodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/ws1")
    parser.add_argument("--tasks", default="/tmp/ft0")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from helpers.executor_service import start_executor_service

    from rlef.common.config import load_config

    config = load_config(ROOT / "configs/tiny-cpu.yaml")
    s = config.actor.sampling
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        tmp_path = Path(tmp)
        with start_executor_service(tmp_path / "svc", workers=2) as service:
            overrides = [o for o in service.overrides if o.startswith("endpoints.")] + [
                f"model.path={args.model}", f"data.path={args.tasks}", "data.split=valid", f"data.limit={args.problems}",
                "actor.metrics_port=0", f"run.output_dir={tmp_path / 'runs'}", "monitoring.episode_samples.enabled=false",
            ]
            best: dict[str, dict] = {}
            for r in range(args.rounds):
                runs = {"training": lambda: _training(overrides, args.problems * args.rollouts, tmp_path / "rollouts.jsonl"),
                        "evaluation": lambda: _evaluation(overrides, args.problems, args.rollouts, tmp_path / "eval", s.temperature, s.top_p)}
                for name in (("training", "evaluation") if r % 2 == 0 else ("evaluation", "training")):
                    got = runs[name]()
                    got["rate"] = got["episodes"] / got["seconds"]
                    print(f"round {r + 1} {name}: {got['episodes']} rollouts in {got['seconds']:.1f} s = {got['rate']:.2f}/s, "
                          f"{got['turns']:.2f} turns per episode", flush=True)
                    if name not in best or got["rate"] > best[name]["rate"]:
                        best[name] = got
    t, e = best["training"], best["evaluation"]
    print(f"\nmodel {args.model}, {args.problems} problems x {args.rollouts} rollouts, K={config.actor.episodes_in_flight}, "
          f"temperature {s.temperature}, top-p {s.top_p}, up to {config.actor.max_turns} turns; best of {args.rounds} rounds")
    print(f"training mode (rlef actor --dry-run): {t['rate']:.2f} rollouts/s ({t['turns']:.2f} turns/episode)")
    print(f"evaluation (rlef evaluate):           {e['rate']:.2f} rollouts/s ({e['turns']:.2f} turns/episode)")
    print(f"evaluation / training: {e['rate'] / t['rate']:.2f}")


if __name__ == "__main__":
    main()
