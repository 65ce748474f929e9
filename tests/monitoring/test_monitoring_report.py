"""`rlef report`: plots and summary from a run's metrics log, and from a real Prometheus when reachable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from rlef.monitoring.metrics_log import MetricsLog, metrics_log_path
from rlef.monitoring.report import make_report
from rlef.monitoring.report_log import LogData, parse_sample_key
from rlef.monitoring.metrics_log import read_run_metrics

RLEF = str(Path(sys.executable).with_name("rlef"))
T0 = 1_700_000_000.0


def _synthetic_run(run_dir: Path, seconds: int = 120) -> None:
    """Two actors and a learner logging registry snapshots / scalars once a second, with known rates."""
    for actor in range(2):
        reg = CollectorRegistry()
        sent = Counter("rlef_actor_rollouts_sent_total", "x", registry=reg)
        turns = Counter("rlef_actor_turn_outcomes_total", "x", ["turn", "status"], registry=reg)
        lag = Gauge("rlef_actor_policy_version_lag", "x", registry=reg)
        with MetricsLog(metrics_log_path(run_dir, "actor", actor), "actor", actor) as mlog:
            for s in range(seconds + 1):
                if s:
                    sent.inc(2)  # 2 rollouts/s per actor -> 4/s in all
                    turns.labels("1", "pass").inc(1)
                    turns.labels("1", "wrong_answer").inc(1)  # turn 1: 50 %
                    turns.labels("2", "pass").inc(0.25)
                    turns.labels("2", "runtime_error").inc(0.75)  # turn 2: 25 %
                lag.set(actor + 1)
                mlog.snapshot(step=s, registry=reg, time=T0 + s)
    with MetricsLog(metrics_log_path(run_dir, "learner", 0), "learner", 0) as mlog:
        for step in range(1, 21):
            mlog.write(step, {"loss/policy": 1.0 / step, "loss/value": 2.0 / step, "kl": 0.01 * step, "clip_fraction": 0.1,
                              "explained_variance": 0.05 * step, "grad_norm": 3.0, "reward/mean": -1 + 0.1 * step}, time=T0 + 6 * step)


def test_parse_sample_key():
    assert parse_sample_key('rlef_a_total{status="pass",turn="1"}') == ("rlef_a_total", {"status": "pass", "turn": "1"})
    assert parse_sample_key("rlef_b") == ("rlef_b", {})
    assert parse_sample_key("loss/policy") is None


def test_log_derivations_match_the_known_rates(tmp_path):
    _synthetic_run(tmp_path)
    data = LogData(read_run_metrics(tmp_path))
    t, rate = data.rate("rlef_actor_rollouts_sent_total")
    assert np.allclose(rate, 4.0, rtol=0.05), rate
    assert data.label_values("rlef_actor_turn_outcomes_total", "turn") == ["1", "2"]
    _, r1 = data.ratio("rlef_actor_turn_outcomes_total", lambda l: l["turn"] == "1" and l["status"] == "pass", lambda l: l["turn"] == "1")
    _, r2 = data.ratio("rlef_actor_turn_outcomes_total", lambda l: l["turn"] == "2" and l["status"] == "pass", lambda l: l["turn"] == "2")
    assert np.allclose(r1, 0.5, atol=0.02) and np.allclose(r2, 0.25, atol=0.02)
    assert set(data.scalar("rlef_actor_policy_version_lag")) == {"actor-0", "actor-1"}


def test_stale_share_is_of_received_rollouts_and_zero_before_the_first_drop(tmp_path):
    """The log-side "share dropped as stale" is rejected{reason=stale} / received, as the recording rule is;
    a run that never dropped one has no rejected{stale} sample at all, and its share is 0, not missing."""
    reg = CollectorRegistry()
    received = Counter("rlef_learner_rollouts_received_total", "x", registry=reg)
    rejected = Counter("rlef_learner_rollouts_rejected_total", "x", ["reason"], registry=reg)
    with MetricsLog(metrics_log_path(tmp_path, "learner", 0), "learner", 0) as mlog:
        for s in range(121):
            received.inc(10)
            if s > 60:
                rejected.labels("stale").inc(2)  # from minute 2: 20 % of what arrives
                rejected.labels("duplicate").inc(5)  # another reason: not in the share
            mlog.snapshot(step=s, registry=reg, time=T0 + s)
    data = LogData(read_run_metrics(tmp_path))
    t, share = data.ratio("rlef_learner_rollouts_rejected_total", lambda l: l.get("reason") == "stale", lambda l: True,
                          den_name="rlef_learner_rollouts_received_total", absent_is_zero=True)
    early, late = share[t < T0 + 55], share[t > T0 + 75]
    assert len(early) and len(late) and np.allclose(early, 0.0) and np.allclose(late, 0.2, atol=0.01)
    assert data.ratio("rlef_learner_rollouts_rejected_total", lambda l: False, lambda l: True,
                      den_name="rlef_nothing_total", absent_is_zero=True) is None  # no denominator: no data


@pytest.mark.slow
def test_report_from_metrics_log(tmp_path):
    _synthetic_run(tmp_path)
    res = subprocess.run([RLEF, "report", str(tmp_path), "--prometheus", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "report"
    for name in ("reward", "solve_rate", "throughput", "staleness", "losses"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "(unreachable)" in summary and "3 file(s), 262 record(s), 0 malformed" in summary
    values = dict(re.findall(r"^\| (.+?) \| ([-0-9.e]+) \|$", summary, re.M))
    assert float(values["Solve rate by turn (public tests) and final: turn 1"]) == pytest.approx(0.5, abs=0.02)
    assert float(values["Solve rate by turn (public tests) and final: turn 2"]) == pytest.approx(0.25, abs=0.02)
    assert float(values["Rollouts per second: sent by actors"]) == pytest.approx(4.0, rel=0.05)
    assert float(values["Policy loss: policy"]) == pytest.approx(1 / 20)
    assert float(values["Mean reward: learner batch"]) == pytest.approx(1.0)
    assert "| Executor tests per second: all statuses | missing |" in summary
    assert "| Solve rate by turn (public tests) and final: turn * | metrics log |" in summary


@pytest.mark.services
@pytest.mark.slow
def test_report_from_live_prometheus(live_run, tmp_path):
    api = live_run.prometheus
    api.wait_for("sum(rlef:executor_tests:rate1m) > 0", 60)
    summary = make_report(live_run.run_dir, prometheus=api.url, out_dir=tmp_path, window_s=120)
    text = summary.read_text()
    assert "(used)" in text
    assert "| Executor tests per second: all statuses | prometheus |" in text
    values = dict(re.findall(r"^\| (.+?) \| ([-0-9.e]+) \|$", text, re.M))
    assert float(values["Executor tests per second: all statuses"]) > 0
