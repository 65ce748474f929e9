"""Cost of seeing what the model does: episode sampling and each tracker, as a ratio to the work they ride on.

Reads a finished run (``rlef launch`` of the tiny CPU config) for the real denominators and the real data:
- per episode: an actor's wall seconds per episode (its metrics log: rollouts sent over time), against the
  cost of building + writing one sample (sampled episodes of the run rebuilt as EpisodeRecords), at rate 1
  and at the configured ``monitoring.episode_samples.rate``;
- per learner batch: the batch's wall seconds (learner-0.jsonl), against (a) what the learner thread pays
  (MetricsLog.write with the tracker sink = a queue put, vs without), and (b) for TensorBoard and W&B (offline)
  the tracker thread's work for one batch: the learner's own records of a batch, the other processes' metrics
  log lines that arrive in a batch's time, and the episode table every tracker interval; W&B's CPU includes
  its wandb-core service process.
Run: .venv/bin/python bench/bench_tracking.py RUN_DIR [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from rlef.actor.backends.base import Generation
from rlef.actor.episode_records import EpisodeRecord, TurnRecord
from rlef.actor.samples import episode_sample
from rlef.common.config import load_config
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.messages import FinalOutcome, Rollout, Turn, TurnOutcome, pack_floats, pack_ids
from rlef.monitoring.episode_samples import SampleWriter, read_samples
from rlef.monitoring.metrics_log import MetricsLog, read_metrics_log
from rlef.monitoring.trackers import EPISODE_COLUMNS, TensorBoardTracker, WandbTracker, episode_row


def record_from_sample(s, problems) -> EpisodeRecord:
    """A real sampled episode back as the EpisodeRecord the actor had (token ids of the logged lengths)."""
    turns, wire = [], []
    for t in s.turns:
        ids = list(range(3, 3 + max(1, int(t["response_tokens"]))))
        gen = Generation(ids, [-0.5] * len(ids), t["finish_reason"], int(t["policy_version"]))
        prompt_ids = list(range(3, 3 + int(t["prompt_tokens"])))
        outcome = TurnOutcome(status=t["status"], public_passed=t["public_passed"], public_total=t["public_total"])
        turns.append(TurnRecord(prompt_ids, gen, t["prompt_text"], t["response_text"], t["code"], outcome, None, t["feedback"]))
        wire.append(Turn(prompt_ids=pack_ids(prompt_ids), response_ids=pack_ids(ids), logprobs=pack_floats(gen.logprobs),
                         policy_version=gen.policy_version, has_code=t["code"] is not None, outcome=outcome))
    f = s["final"]
    rollout = Rollout(rollout_id=s["rollout_id"], actor_id=s["actor_id"], problem_id=s["problem_id"], turns=wire,
                      final=FinalOutcome(**f), rewards=s["rewards"], timings=s["timings"])
    return EpisodeRecord(rollout, problems[s["problem_id"]], turns, None)


def actor_seconds_per_episode(run_dir: Path) -> float:
    recs = [r for r in read_metrics_log(run_dir / "metrics" / "actor-0.jsonl") if r.step]
    return (recs[-1].time - recs[0].time) / max(recs[-1].step - recs[0].step, 1)


def learner_batches(run_dir: Path) -> tuple[float, list[list[dict]]]:
    """Median wall seconds between batches, and each batch's records (the U per-update lines + the batch line)."""
    records = list(read_metrics_log(run_dir / "metrics" / "learner-0.jsonl"))
    batch_times = [r.time for r in records if "batch" in r.values]
    groups, current = [], []
    for r in records:
        current.append({k: v for k, v in r.values.items() if v is not None} | {"_step": r.step})
        if "batch" in r.values:
            groups.append(current)
            current = []
    return statistics.median(b - a for a, b in zip(batch_times, batch_times[1:])), groups


def other_lines_per_batch(run_dir: Path, batch_s: float, interval_s: float) -> list[dict]:
    """One batch's worth of the other processes' snapshot records (their real contents), prefixed like the tracker."""
    out = []
    for path in sorted((run_dir / "metrics").glob("*.jsonl")):
        if path.name == "learner-0.jsonl":
            continue
        recs = list(read_metrics_log(path))
        n = max(1, round(batch_s / interval_s))
        for r in recs[-n:]:
            prefix = f"{r.role}-{r.id}/"
            out.append({prefix + k: v for k, v in r.values.items() if v is not None and "_bucket" not in k})
    return out


def per_batch_tracker_seconds(tracker, batches, others, rows, table_every: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process + its children, e.g. wandb-core) per batch the tracker thread spends."""
    me = psutil.Process()

    def cpu() -> float:
        total = sum(me.cpu_times()[:2])
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    c0, t0 = cpu(), time.perf_counter()
    for i, batch in enumerate(batches):
        for rec in batch:
            step = int(rec.pop("_step", 0) or 0)
            tracker.log_scalars(step, rec, time.time())
        for rec in others:
            tracker.log_scalars(step, rec, time.time())
        if i % table_every == 0:
            tracker.log_episodes(step, EPISODE_COLUMNS, rows)
        tracker.flush()
    tracker.close()
    time.sleep(0.5)  # let a service process account its last work
    return (time.perf_counter() - t0) / len(batches), (cpu() - c0) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5, help="replay the run's batches this many times per tracker")
    args = parser.parse_args()
    run_dir = args.run_dir
    config = load_config(run_dir / "config.yaml")
    rate = config.monitoring.episode_samples.rate
    problems = {p.problem_id: p for p in load_problems(config.data.dataset, config.data.path, config.data.split)}
    samples = read_samples(run_dir)
    records = [record_from_sample(s, problems) for s in samples]
    episode_s = actor_seconds_per_episode(run_dir)

    with tempfile.TemporaryDirectory() as tmp:
        writer = SampleWriter(Path(tmp) / "s", max_bytes=64 << 20, file_bytes=4 << 20)
        n = 0
        t0 = time.perf_counter()
        for _ in range(20):
            for r in records:
                writer.write(episode_sample(r))
                n += 1
        sample_s = (time.perf_counter() - t0) / n
        writer.close()
        size = writer.total_bytes / n
    print(f"run {run_dir}: {len(samples)} sampled episodes, actor {episode_s * 1e3:.0f} ms wall per episode")
    print(f"sample one episode (build + write, {size / 1024:.1f} KiB): {sample_s * 1e6:6.0f} us = "
          f"{sample_s / episode_s:.2e} of an episode at rate 1; {rate * sample_s / episode_s:.2e} at rate {rate}")

    batch_s, batches = learner_batches(run_dir)
    batches = batches * args.repeat
    lines = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        plain = MetricsLog(Path(tmp) / "a.jsonl")
        t0 = time.perf_counter()
        for b in batches:
            for rec in b:
                plain.write(rec.get("_step"), {k: v for k, v in rec.items() if k != "_step"})
        base = (time.perf_counter() - t0) / len(batches)
        sunk = MetricsLog(Path(tmp) / "b.jsonl")
        import queue
        q: queue.Queue = queue.Queue()
        sunk.add_sink(lambda step, values, when: q.put_nowait((step, values, when)))
        t0 = time.perf_counter()
        for b in batches:
            for rec in b:
                sunk.write(rec.get("_step"), {k: v for k, v in rec.items() if k != "_step"})
        with_sink = (time.perf_counter() - t0) / len(batches)
    print(f"learner batch: {batch_s:.2f} s wall ({lines / len(batches):.0f} metrics-log records per batch)")
    print(f"learner thread, metrics log without / with the tracker sink: {base * 1e6:.0f} / {with_sink * 1e6:.0f} us per batch;"
          f" the sink adds {(with_sink - base) / batch_s:.2e} of a batch")

    interval = config.monitoring.metrics_log_interval_s
    others = other_lines_per_batch(run_dir, batch_s, interval)
    rows = [episode_row(s) for s in samples[-50:]]
    table_every = max(1, round(config.monitoring.tracker_interval_s / batch_s))
    print(f"tracker input per batch: {lines / len(batches):.0f} learner records + {len(others)} records of other processes "
          f"({sum(len(o) for o in others)} scalars); a {len(rows)}-row episode table every {table_every} batch(es)")
    with tempfile.TemporaryDirectory() as tmp:
        tb = TensorBoardTracker(Path(tmp) / "tb")
        wall, cpu = per_batch_tracker_seconds(tb, [[dict(r) for r in b] for b in batches], others, rows, table_every)
        print(f"tensorboard: {wall * 1e3:6.1f} ms wall, {cpu * 1e3:6.1f} ms CPU per batch = {cpu / batch_s:.2e} of a batch (CPU)")
        os.environ.setdefault("WANDB_SILENT", "true")
        wb = WandbTracker("bench", Path(tmp) / "wb", config.model_dump(mode="json"), mode="offline", project="rlef-bench",
                          entity=None, tags=[])
        wall, cpu = per_batch_tracker_seconds(wb, [[dict(r) for r in b] for b in batches], others, rows, table_every)
        print(f"wandb (offline): {wall * 1e3:6.1f} ms wall, {cpu * 1e3:6.1f} ms CPU per batch (incl. wandb-core) = "
              f"{cpu / batch_s:.2e} of a batch (CPU)")
    print(json.dumps({"episode_s": episode_s, "sample_s": sample_s, "batch_s": batch_s}))


if __name__ == "__main__":
    main()
