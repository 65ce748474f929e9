"""Metric plumbing shared by every role: the /metrics server and the info/heartbeat series.

Role-specific metric definitions live beside this file in ``metrics_<role>.py`` (one module per role, all
following Prometheus naming: ``rlef_<role>_<what>_<unit>``, counters end in ``_total``, base units).

Every process also appends its registry to the run's metrics log (``RUN_DIR/metrics/<role>-<id>.jsonl``,
:mod:`rlef.monitoring.metrics_log`) when it knows the run directory: ``serve_metrics(..., run_dir=...)``, or the
``RLEF_RUN_DIR`` environment variable that the launchers set for every role. So roles that only call
``serve_metrics`` (executors, the broker) get a metrics log without code of their own, and ``rlef report``
works without Prometheus.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Info, start_http_server

ROLE_INFO = Info("rlef_role", "Identity of this process: role, id, package version.")
HEARTBEAT = Gauge("rlef_heartbeat_timestamp_seconds", "Unix time of this process' last main-loop iteration.")
POLICY_VERSION = Gauge("rlef_policy_version", "Policy (weights) version this process holds; -1 before the first.")

log = logging.getLogger(__name__)

#: Environment variables the launchers set so every role writes the run's metrics log.
RUN_DIR_ENV = "RLEF_RUN_DIR"
LOG_INTERVAL_ENV = "RLEF_METRICS_LOG_INTERVAL_S"

#: Canonical per-second keys each role's snapshots carry (derived from its counters; see metrics_log.REPORT_KEYS).
ROLE_RATES: dict[str, dict[str, str]] = {
    "actor": {
        "throughput/rollouts_per_s": "rlef_actor_rollouts_sent_total",
        "throughput/tokens_per_s": "rlef_actor_generated_tokens_total",
        "throughput/episodes_per_s": "rlef_actor_episodes_total",
    },
    "executor": {"throughput/tests_per_s": "rlef_executor_tests_total", "throughput/jobs_per_s": "rlef_executor_jobs_total"},
    "executor-broker": {"throughput/jobs_per_s": "rlef_executor_broker_jobs_total"},
}
#: Canonical increase-ratio keys (increase(a) / increase(b) between two snapshots).
ROLE_RATIOS: dict[str, dict[str, tuple[str, str]]] = {
    "actor": {"reward/episode_mean": ("rlef_actor_episode_reward_running_sum", "rlef_actor_episodes_total")},
}
#: The counter whose value is a role's ``step`` in its metrics log.
ROLE_STEP = {"actor": "rlef_actor_rollouts_sent_total", "executor": "rlef_executor_jobs_total",
             "executor-broker": "rlef_executor_broker_jobs_total", "learner": "rlef_learner_updates_total",
             "evaluator": "rlef_evaluator_evaluations_total"}

_snapshotter = None  # this process' metrics-log snapshotter (one per process)


def serve_metrics(
    role: str, process_id: str, port: int, registry: CollectorRegistry = REGISTRY, *,
    run_dir: str | os.PathLike | None = None, log_interval_s: float | None = None,
) -> int | None:
    """Start the /metrics HTTP server (port 0 = none), publish the identity series and start this process'
    metrics log when the run directory is known (``run_dir``, else ``$RLEF_RUN_DIR``); returns the port."""
    from importlib.metadata import version

    ROLE_INFO.info({"role": role, "id": process_id, "version": version("rlef")})
    POLICY_VERSION.set(-1)
    beat()
    run_dir = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV) or None
    if run_dir is not None:
        start_metrics_log(run_dir, role, process_id, log_interval_s, registry)
    if port <= 0:
        return None
    start_http_server(port, registry=registry)
    return port


def start_metrics_log(
    run_dir: str | os.PathLike, role: str, process_id: str, interval_s: float | None = None,
    registry: CollectorRegistry = REGISTRY,
):  # -> Snapshotter | None
    """Snapshot ``registry`` into ``RUN_DIR/metrics/<role>-<id>.jsonl`` every ``interval_s`` (default:
    ``$RLEF_METRICS_LOG_INTERVAL_S`` or 5 s) until exit; once per process. A run directory that cannot be
    written is logged and the role goes on without a log."""
    global _snapshotter
    from rlef.monitoring.metrics_log import MetricsLog, metrics_log_path

    if _snapshotter is not None:
        return _snapshotter
    if interval_s is None:
        interval_s = float(os.environ.get(LOG_INTERVAL_ENV) or 5.0)
    process_id = process_id.removeprefix(f"{role}-")  # "actor-0" -> actor-0.jsonl, not actor-actor-0.jsonl
    path = metrics_log_path(Path(run_dir), role, process_id)
    try:
        mlog = MetricsLog(path, role=role, process_id=process_id)
    except OSError as exc:
        log.warning("no metrics log for %s-%s: cannot open %s: %s", role, process_id, path, exc)
        return None
    _snapshotter = mlog.start_snapshots(interval_s, registry, rates=ROLE_RATES.get(role),
                                     ratios=ROLE_RATIOS.get(role), step_from=ROLE_STEP.get(role))
    atexit.register(stop_metrics_log)  # the last snapshot holds the final counter values
    return _snapshotter


def stop_metrics_log() -> None:
    """Write the last snapshot and close this process' metrics log (idempotent; also runs at exit)."""
    global _snapshotter
    snap, _snapshotter = _snapshotter, None
    if snap is not None:
        snap.stop()


def snapshot_now() -> None:
    """Write one metrics-log snapshot now (the evaluator calls it after each evaluation, so every curve point
    is in the log even when evaluations are closer together than the snapshot interval)."""
    if _snapshotter is not None:
        _snapshotter.snapshot()


def beat(policy_version: int | None = None) -> None:
    """Mark the main loop alive (alert rules fire on a stale heartbeat)."""
    HEARTBEAT.set(time.time())
    if policy_version is not None:
        POLICY_VERSION.set(policy_version)
