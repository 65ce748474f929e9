"""Integration: Debian's Prometheus scrapes real rlef processes; key series exist, carry identity and move."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _wait_increase(api, expr: str, timeout_s: float = 60.0) -> tuple[float, float]:
    """Value of ``expr`` now and once it has grown (raises if it never does)."""
    api.wait_for(expr, timeout_s)
    first = api.value(expr)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        later = api.value(expr)
        if later > first:
            return first, later
    pytest.fail(f"{expr} did not increase in {timeout_s} s (stayed at {first})")


def test_targets_up_with_identity(live_run):
    api = live_run.prometheus
    api.wait_for("count(up == 1) == 4", 30)
    assert {s["metric"]["job"] for s in api.query("up == 1")} == set(live_run.roles)
    roles = {s["metric"]["role"]: s["metric"] for s in api.wait_for("rlef_role_info", 30)}
    assert set(roles) == set(live_run.roles)
    # The target's id label wins; the process' own id (from rlef_role_info) is kept as exported_id.
    assert roles["executor"]["job"] == "executor" and roles["executor"]["id"] == "0"
    assert roles["actor"]["exported_id"] == "actor-0" and roles["learner"]["exported_id"] == "rank0"
    beats = api.query("time() - rlef_heartbeat_timestamp_seconds")
    assert len(beats) == 4 and all(float(s["value"][1]) < 60 for s in beats), beats


def test_executor_counters_move(live_run):
    api = live_run.prometheus
    _wait_increase(api, "sum(rlef_executor_tests_total)")
    _wait_increase(api, "sum(rlef_executor_broker_jobs_total)")
    _wait_increase(api, "sum(rlef_executor_job_duration_seconds_count)")


def test_status_mix_is_visible(live_run):
    api = live_run.prometheus
    api.wait_for('rlef_executor_tests_total{status="pass"} > 0', 60)
    deadline = time.monotonic() + 60
    want = {"pass", "wrong_answer", "runtime_error", "timeout"}
    while time.monotonic() < deadline:
        seen = {s["metric"]["status"] for s in api.query("rlef_executor_tests_total > 0")}
        if want <= seen:
            break
        time.sleep(1)
    assert want <= seen, seen


def test_recording_rules_evaluate_on_live_data(live_run):
    api = live_run.prometheus
    rates = api.wait_for("rlef:executor_tests:rate1m > 0", 60)
    assert {"status"} <= set(rates[0]["metric"])
    api.wait_for("rlef:executor_sandboxes_busy:ratio >= 0", 30)
    assert api.wait_for("rlef:executor_job_duration_seconds:p95_5m > 0", 60)


def test_actor_and_learner_series_move(live_run):
    api = live_run.prometheus
    _wait_increase(api, "sum(rlef_actor_rollouts_sent_total)", 120)
    _wait_increase(api, "sum(rlef_actor_generated_tokens_total)", 120)
    _wait_increase(api, "sum(rlef_learner_rollouts_received_total)", 120)
    _wait_increase(api, "max(rlef_learner_updates_total)", 180)
    assert api.value('max(rlef_policy_version{job="learner"})') >= 1
    api.wait_for('max(rlef_policy_version{job="actor"}) >= 1', 120)  # the actor applied trained weights
    turns = {s["metric"]["turn"] for s in api.query("rlef_actor_turn_outcomes_total")}
    assert "1" in turns


def test_derived_training_series(live_run):
    api = live_run.prometheus
    for expr in ("rlef:actor_rollouts:rate1m > 0", "rlef:actor_generated_tokens:rate1m > 0", "rlef:learner_updates:rate5m > 0",
                 'rlef:turn_solve_rate:ratio_rate5m{turn="1"} >= 0', "rlef:reward:mean5m", "rlef:learner_rollout_lag:mean5m >= 0",
                 "rlef:learner_weights_sync_seconds:mean5m > 0"):
        api.wait_for(expr, 120)
    reward = api.value("rlef:reward:mean5m")
    assert -1.0 - 0.2 * 3 - 1e-9 <= reward <= 1.0  # reward terms bound the mean
