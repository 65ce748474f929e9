"""The learner process: ``rlef learner --config ...`` under torchrun (N ranks; one rank works too).

Per batch: rank 0 (the hub) gathers B valid rollouts and broadcasts them (encoded frames) to every rank;
all ranks re-score and run the U updates (rlef.learner.ppo); the version goes up by one; every rank joins
the full-state-dict gather and rank 0 publishes it; every ``checkpoint.every_batches`` batches all ranks
write a sharded checkpoint. Version 0 (the initial weights) is published at start, or the resumed version.

Stops after ``learner.total_updates`` updates, after ``deploy.max_batches`` batches, on a control-channel
stop, or on SIGTERM/SIGINT (rank 0 notices while waiting for rollouts). It then writes a final checkpoint
and, when training is done, tells every peer to stop through the control channel.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from rlef.common.config import RlefConfig, dump_config
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Rollout
from rlef.learner import checkpoint as ckpt
from rlef.learner.parallel import full_state_dict, init_distributed
from rlef.learner.ppo import PPOLearner
from rlef.monitoring import metrics_learner as M
from rlef.monitoring.metrics import beat, serve_metrics
from rlef.monitoring.metrics_log import MetricsLog, metrics_log_path
from rlef.monitoring.trackers import start_run_tracker

log = logging.getLogger(__name__)


class _StopFlag:
    """Set by SIGTERM/SIGINT; checked by rank 0 between rollouts (never interrupts an update)."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("signal %d: stopping after the current step", signum)
        self.requested = True


def _broadcast(obj, rank: int):
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def batch_summary(rollouts: list[Rollout], version: int) -> dict[str, float]:
    """Reward, solve rates and staleness of a batch (computed on rank 0 from the messages)."""
    n = max(len(rollouts), 1)
    out = {
        "reward/mean": sum(sum(r.rewards) for r in rollouts) / n,
        "solve_rate/final": sum(r.final.passed for r in rollouts) / n,
    }
    for k in range(1, max((len(r.turns) for r in rollouts), default=0) + 1):
        out[f"solve_rate/turn_{k}"] = sum(any(t.outcome.status == "pass" for t in r.turns[:k]) for r in rollouts) / n
    failed_first = [r for r in rollouts if r.turns and r.turns[0].outcome.status != "pass"]
    if failed_first:
        # The paper's "does the model fix its mistakes": turn-1 failures that a later turn made correct.
        out["fix_rate/turn_1_failures"] = sum(r.final.passed for r in failed_first) / len(failed_first)
    lags = np.array([version - r.oldest_version for r in rollouts], dtype=np.float64)
    out["staleness/mean"] = float(lags.mean()) if len(lags) else 0.0
    for lag in lags:
        M.STALENESS.observe(lag)
    return out


class Learner:
    def __init__(self, config: RlefConfig, resume: str):
        self.config = config
        cfg = config.learner
        self.rank, self.world, self.device = init_distributed(cfg.dist_backend, cfg.device)
        torch.manual_seed(config.run.seed * 1000 + self.rank)
        self.run_dir = Path(config.run.run_dir)
        self.ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir is not None else self.run_dir / "checkpoints"
        # Every rank also snapshots its registry into RUN_DIR/metrics/learner-rank<r>.jsonl (rank 0's scalars of
        # each batch go to learner-0.jsonl below).
        serve_metrics("learner", f"rank{self.rank}", cfg.metrics_port + self.rank if cfg.metrics_port else 0,
                      run_dir=self.run_dir, log_interval_s=config.monitoring.metrics_log_interval_s)
        self.stop = _StopFlag()
        self.ppo = PPOLearner(config, self.device)
        self.version, self.batches, consumed = 0, 0, []
        path = _broadcast(str(ckpt.resolve_resume(resume, self.ckpt_root) or ""), self.rank)
        if path:
            state = ckpt.load(self.ppo, Path(path))
            self.version, self.batches, consumed = int(state["version"]), int(state["batches"]), state["consumed"]
            log.info("resumed from %s: step %d, version %d, batch %d", path, self.ppo.step, self.version, self.batches)
        self.last_saved_step = self.ppo.step
        self.hub = None
        self.mlog = None
        self.tracker = None
        if self.rank == 0:
            from rlef.learner.hub import Hub

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "learner-config.yaml").write_text(dump_config(config))
            spool = self.run_dir / "learner" / "rollout-spool.bin"
            if resume == "none" and spool.exists():
                # A fresh start: rollouts spooled by an earlier run of this run directory are not ours to train on.
                log.warning("--resume none: discarding %s left by an earlier run", spool)
                spool.unlink()
            self.hub = Hub(config, vocab_size=self.ppo.vocab_size, version=self.version, spool_path=spool)
            self.hub.restore(consumed, self.version)
            self.mlog = MetricsLog(metrics_log_path(self.run_dir, "learner", 0), role="learner", process_id=0)
            # TensorBoard / W&B when switched on: fed from a background thread, never a reason to stop training.
            self.tracker = start_run_tracker(config, self.run_dir, own_log=self.mlog.path)
            if self.tracker is not None:
                self.mlog.add_sink(self.tracker.log_scalars)
            self.batch_log = open(roll_back_batch_log(self.run_dir / "learner" / "batches.jsonl", self.batches), "a")
        M.STEP.set(self.ppo.step)
        self.sync_weights()

    # ------------------------------------------------------------ pieces of the loop

    def sync_weights(self) -> float:
        """All ranks gather the full state dict; rank 0 publishes it as ``self.version``."""
        t0 = time.perf_counter()
        state = full_state_dict(self.ppo.policy)
        if self.hub is not None:
            self.hub.publish(self.version, state)
        del state
        seconds = time.perf_counter() - t0
        M.SYNC_SECONDS.observe(seconds)
        return seconds

    def done(self) -> bool:
        cfg = self.config
        if self.ppo.step >= cfg.learner.total_updates:
            return True
        return cfg.deploy.max_batches is not None and self.batches >= cfg.deploy.max_batches

    def next_batch(self) -> list[Rollout] | None:
        # Rank 0 forwards the frames the rollouts arrived in (no re-encoding) and keeps the rollouts it already
        # decoded; only the other ranks decode.
        frames, rollouts = None, None
        if self.hub is not None:
            got = self.hub.collect_frames(self.config.learner.batch_rollouts, lambda: self.stop.requested)
            if got is not None:
                rollouts, frames = got
        frames = _broadcast(frames, self.rank)
        if frames is None:
            return None
        return rollouts if rollouts is not None else [decode(f, Rollout) for f in frames]

    def save(self) -> None:
        t0 = time.perf_counter()
        consumed = sorted(self.hub.buffer.consumed) if self.hub is not None else []
        path = ckpt.save(self.ppo, self.ckpt_root, version=self.version, batches=self.batches, consumed=consumed,
                         keep=self.config.learner.checkpoint.keep)
        if self.hub is not None:
            self.hub.buffer.compact_spool()
        self.last_saved_step = self.ppo.step
        M.CHECKPOINT_SECONDS.observe(time.perf_counter() - t0)
        if self.rank == 0:
            log.info("checkpoint %s (step %d, version %d)", path, self.ppo.step, self.version)

    def record(self, rollouts: list[Rollout], stats: dict, updates: list[dict], seconds: dict) -> None:
        last = updates[-1]
        tokens = sum(u["tokens"] for u in updates)
        tps = tokens / max(sum(u["seconds"] for u in updates), 1e-9)
        M.UPDATES.inc(len(updates))
        M.BATCHES.inc()
        M.STEP.set(self.ppo.step)
        M.TOKENS.inc(tokens)
        M.TOKENS_PER_SECOND.set(tps)
        M.POLICY_LOSS.set(last["loss/policy"])
        M.VALUE_LOSS.set(last["loss/value"])
        M.KL.set(stats["kl"])
        M.APPROX_KL.set(last["approx_kl"])
        M.CLIP_FRACTION.set(last["clip_fraction"])
        M.EXPLAINED_VARIANCE.set(stats["explained_variance"])
        M.MISMATCH_KL.set(stats["mismatch_kl"])
        M.TRUNCATION_FRACTION.set(last["truncation_fraction"])
        M.GRAD_NORM.labels(model="policy").set(last["grad_norm"])
        M.GRAD_NORM.labels(model="value").set(last["grad_norm/value"])
        M.ENTROPY.set(last["entropy"])
        M.BATCH_SECONDS.observe(seconds["train"])
        beat(self.version)
        if self.rank != 0:
            return
        summary = batch_summary(rollouts, self.version - 1)
        M.BATCH_REWARD.set(summary["reward/mean"])
        M.SOLVE_RATE.set(summary["solve_rate/final"])
        M.ROLLOUTS_CONSUMED.inc(len(rollouts))
        values = {**{k: v for k, v in stats.items()}, **summary, **{k: v for k, v in last.items()},
                  "throughput/tokens_per_s": tps, "weights/sync_seconds": seconds["sync"],
                  "throughput/rollouts_per_s": len(rollouts) / max(seconds["batch"], 1e-9),
                  "version": self.version, "batch": self.batches, "buffer/rollouts": len(self.hub.buffer),
                  **{f"rejected/{k}": v for k, v in self.hub.buffer.rejected.items()}}
        values["staleness/dropped"] = self.hub.buffer.rejected.get("stale", 0)
        for i, upd in enumerate(updates[:-1]):
            self.mlog.write(self.ppo.step - len(updates) + 1 + i, {k: upd[k] for k in ("loss/policy", "loss/value", "clip_fraction", "truncation_fraction", "grad_norm")})
        self.mlog.write(self.ppo.step, values)
        self.batch_log.write(json.dumps({"batch": self.batches, "step": self.ppo.step, "version": self.version,
                                         "rollout_ids": [r.rollout_id for r in rollouts]}) + "\n")
        self.batch_log.flush()

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        every = self.config.learner.checkpoint.every_batches
        finished = False
        try:
            while not (finished := self.done()):
                t0 = time.perf_counter()
                batch = self.next_batch()
                if batch is None:
                    break
                t1 = time.perf_counter()
                stats, updates = self.ppo.train_batch(batch)
                t2 = time.perf_counter()
                self.version += 1
                self.batches += 1
                sync = self.sync_weights()
                self.record(batch, stats, updates, {"train": t2 - t1, "sync": sync, "batch": time.perf_counter() - t0})
                if self.batches % every == 0:
                    self.save()
            if self.ppo.step != self.last_saved_step:
                self.save()
        finally:
            if self.hub is not None:
                self.hub.close(stop_peers=finished)
                self.mlog.close()
                if self.tracker is not None:
                    self.tracker.close()
                self.batch_log.close()
        log.info("learner done: step %d, version %d, %d batches", self.ppo.step, self.version, self.batches)
        return 0


def roll_back_batch_log(path: Path, batches: int) -> Path:
    """Keep in ``path`` only the batches the resumed state contains (batch <= ``batches``).

    Batches trained after the checkpoint we resume from were lost with the crash: their rollouts are
    re-admitted from the spool and trained again, so leaving their lines would list those ids twice. The
    removed lines go to ``batches-rolled-back.jsonl`` next to it (what was trained and then lost)."""
    if not path.exists():
        return path
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        try:
            batch = int(json.loads(line)["batch"])
        except (ValueError, KeyError, TypeError):  # a line torn by the crash: it was never a whole record
            dropped.append(line)
            continue
        (kept if batch <= batches else dropped).append(line)
    if dropped:
        with open(path.with_name("batches-rolled-back.jsonl"), "a") as out:
            out.write("".join(line + "\n" for line in dropped))
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
        log.warning("%s: %d batch line(s) after batch %d rolled back (trained before the crash, lost with it)",
                    path, len(dropped), batches)
    return path


def main(config: RlefConfig, resume: str = "none") -> int:
    from rlef.learner.lifeline import watch_parent

    watch_parent()  # under torchrun: this rank dies with its agent (rlef.learner.lifeline)
    learner = Learner(config, resume)
    try:
        return learner.run()
    finally:
        dist.destroy_process_group()
