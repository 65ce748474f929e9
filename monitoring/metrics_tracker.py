"""Metrics of the experiment trackers (TensorBoard, W&B) that learner rank 0 feeds (rlef.monitoring.trackers)."""

from __future__ import annotations

from prometheus_client import Counter

TRACKER_ERRORS = Counter(
    "rlef_learner_tracker_errors_total", "Trackers switched off after an error (training goes on), by tracker.", ["tracker"]
)
TRACKER_DROPPED = Counter(
    "rlef_learner_tracker_dropped_total", "Metrics-log records not handed to the trackers because their queue was full."
)
