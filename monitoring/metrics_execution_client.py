"""Metrics of the execution client (common/protocol/execution_client.py), kept apart from the executor's series because
the client lives in actor processes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CLIENT_JOBS = Counter("rlef_execution_client_jobs_total", "Jobs submitted to the executor broker, by result status.", ["status"])
CLIENT_TIMEOUTS = Counter("rlef_execution_client_timeouts_total", "Jobs that got no result in time (returned as sandbox_error).")
CLIENT_BAD_REPLIES = Counter("rlef_execution_client_bad_replies_total", "Malformed or unmatched replies dropped.")
CLIENT_RESENT = Counter(
    "rlef_execution_client_resent_total",
    "Jobs re-sent under the same job_id after the connection to the broker was lost and made again (broker restart).",
)
CLIENT_PENDING = Gauge("rlef_execution_client_pending_jobs", "Jobs sent and not answered yet.")
CLIENT_LATENCY = Histogram(
    "rlef_execution_client_latency_seconds", "Submit to result, as the requester sees it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
