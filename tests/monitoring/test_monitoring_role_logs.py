"""Every role writes the run's metrics log: registry snapshots with canonical rate keys, from serve_metrics
(explicit run_dir, or RLEF_RUN_DIR as the launchers set it), here through a real `rlef executor-broker` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from rlef.monitoring.metrics_log import MetricsLog, read_metrics_log, read_run_metrics
from rlef.monitoring.promconfig import free_port
from rlef.monitoring.report_log import LogData

ROOT = Path(__file__).resolve().parents[2]


def test_snapshots_carry_rates_ratios_and_step(tmp_path):
    reg = CollectorRegistry()
    sent = Counter("rlef_actor_rollouts_sent_total", "x", registry=reg)
    tokens = Counter("rlef_actor_generated_tokens_total", "x", ["kind"], registry=reg)
    reward = Gauge("rlef_actor_episode_reward_running_sum", "x", registry=reg)
    mlog = MetricsLog(tmp_path / "actor-0.jsonl", "actor", 0)
    # The timer never fires here: a snapshot taken between two increments of one step would see half a step
    # (rollouts counted, tokens not yet), so the test takes each snapshot between steps itself.
    snap = mlog.start_snapshots(3600.0, reg, rates={"throughput/rollouts_per_s": "rlef_actor_rollouts_sent_total",
                                                    "throughput/tokens_per_s": "rlef_actor_generated_tokens_total"},
                                ratios={"reward/episode_mean": ("rlef_actor_episode_reward_running_sum", "rlef_actor_rollouts_sent_total")},
                                step_from="rlef_actor_rollouts_sent_total")
    snap.snapshot()
    for _ in range(6):
        sent.inc(2)
        tokens.labels("a").inc(30)
        tokens.labels("b").inc(10)
        reward.dec(1.0)  # -0.5 per rollout
        time.sleep(0.05)
        snap.snapshot()
    snap.stop()
    records = list(read_metrics_log(tmp_path / "actor-0.jsonl"))
    assert len(records) >= 4 and "throughput/rollouts_per_s" not in records[0].values  # no rate before a second point
    with_rates = [r for r in records if r.values.get("throughput/rollouts_per_s")]
    assert with_rates
    for r in with_rates:  # 2 rollouts and 40 tokens per 0.2 s: 20 tokens per rollout whatever the timing
        assert abs(r.values["throughput/tokens_per_s"] / r.values["throughput/rollouts_per_s"] - 20.0) < 1e-6
    assert all(abs(r.values["reward/episode_mean"] + 0.5) < 1e-9 for r in records if "reward/episode_mean" in r.values)
    assert records[-1].step == 12 and records[-1].values["rlef_actor_rollouts_sent_total"] == 12.0


def test_broker_process_writes_the_metrics_log_from_the_environment(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "RLEF_RUN_DIR": str(run_dir), "RLEF_METRICS_LOG_INTERVAL_S": "0.3"}
    front, back = free_port(), free_port()
    cmd = [sys.executable, "-m", "rlef.common.cli", "executor-broker", "--config", str(ROOT / "configs/tiny-cpu.yaml"),
           f"endpoints.broker_frontend_port={front}", f"endpoints.broker_backend_port={back}", "executor.metrics_port=0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    path = run_dir / "metrics" / "executor-broker-broker.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and len(path.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode() if proc.poll() is not None else "no log"
            time.sleep(0.2)
        lines_before = len(path.read_text().splitlines())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    records = list(read_metrics_log(path))
    assert len(records) > lines_before - 1  # a last snapshot at exit
    assert {r.role for r in records} == {"executor-broker"} and records[-1].id == "broker"
    assert "rlef_executor_broker_workers_alive" in records[-1].values
    assert "throughput/jobs_per_s" in records[-1].values
    assert LogData(read_run_metrics(run_dir)).by_process.keys() == {("executor-broker", "broker")}


def test_unwritable_run_dir_is_logged_and_the_role_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
            "from rlef.monitoring.metrics import serve_metrics\n"
            f"serve_metrics('executor', 'executor-h-0', 0, run_dir={str(blocker)!r})\n"
            "print('still here')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "still here" in out.stdout and "no metrics log for executor-h-0" in out.stderr
