"""Metrics of the executor role: the sandbox workers (``rlef executor``) and the broker (``rlef executor-broker``).

Both processes import this module; each only moves the series it owns (worker series stay at zero in the
broker and the other way round). Names follow ``rlef_executor_<what>_<unit>``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# ---------------------------------------------------------------- workers (rlef executor)
JOBS = Counter("rlef_executor_jobs_total", "Jobs finished by this executor, by headline status.", ["status"])
TESTS = Counter("rlef_executor_tests_total", "Tests run by this executor, by status.", ["status"])
JOB_SECONDS = Histogram("rlef_executor_job_duration_seconds", "Wall time of one job in a sandbox.", buckets=LATENCY_BUCKETS)
TEST_SECONDS = Histogram("rlef_executor_test_duration_seconds", "Wall time of one test (fork to exit).", buckets=LATENCY_BUCKETS)
SANDBOX_ERRORS = Counter("rlef_executor_sandbox_errors_total", "Jobs or tests that failed through our fault, by cause.", ["cause"])
JAIL_RESTARTS = Counter("rlef_executor_jail_retries_total", "Jobs re-run in a fresh jail after their jail died.")
BUSY_SANDBOXES = Gauge("rlef_executor_busy_sandboxes", "Sandboxes of this executor running a job now.")
SANDBOXES = Gauge("rlef_executor_sandboxes", "Sandboxes in this executor's pool.")
LIMITS_MODE = Gauge(
    "rlef_executor_limits_mode", "1 for the per-test limits mode this executor runs in: cgroup v1 or v2 (whole jail "
    "counted), or weak (per-process rlimits only: forked children escape the time and memory limits).", ["mode"]
)
WORKER_RECONNECTS = Counter("rlef_executor_reconnects_total", "Times a sandbox slot reconnected to a silent broker.")
BAD_MESSAGES = Counter("rlef_executor_bad_messages_total", "Malformed messages dropped, by receiving process kind.", ["process"])

# ---------------------------------------------------------------- broker (rlef executor-broker)
QUEUE_DEPTH = Gauge("rlef_executor_broker_queue_depth", "Jobs waiting for a free worker.")
IN_FLIGHT = Gauge("rlef_executor_broker_in_flight", "Jobs running on a worker.")
WORKERS_ALIVE = Gauge("rlef_executor_broker_workers_alive", "Workers (sandbox slots) the broker has heard from recently.")
WORKERS_IDLE = Gauge("rlef_executor_broker_workers_idle", "Alive workers waiting for a job.")
BROKER_JOBS = Counter("rlef_executor_broker_jobs_total", "Jobs through the broker, by outcome (received, completed, refused, busy: queue full, failed, requester_gone, duplicate_result).", ["outcome"])
BROKER_LATENCY = Histogram(
    "rlef_executor_broker_job_latency_seconds", "Job arrival to result sent back, as the broker sees it.", buckets=LATENCY_BUCKETS
)
BROKER_WAIT = Histogram("rlef_executor_broker_queue_wait_seconds", "Time a job waited for a free worker.", buckets=LATENCY_BUCKETS)
RETRIES = Counter("rlef_executor_broker_retries_total", "Jobs requeued because their worker died or went silent.")
WORKERS_LOST = Counter("rlef_executor_broker_workers_lost_total", "Workers declared dead after missing heartbeats.")
