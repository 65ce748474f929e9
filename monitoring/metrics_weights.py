"""Metrics of the weight channel (learner hub publisher, actor receivers); the control channel's are in
metrics_control.py.

Learner side (``rlef_learner_weights_*``) and actor side (``rlef_actor_weights_*``) live in one module because
both ends of the protocol are in ``rlef.common.weights``. The ``transport`` label is zmq, collective or
filesystem.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# ---------------------------------------------------------------- learner (hub) side
PUBLISH_SECONDS = Histogram(
    "rlef_learner_weights_publish_seconds",
    "Time publish() blocked the learner for one version (pack + hash, or write).",
    ["transport"], buckets=_SECONDS_BUCKETS,
)
PUBLISHED_BYTES = Counter(
    "rlef_learner_weights_published_bytes_total", "Payload bytes of every version published.", ["transport"]
)
SENT_BYTES = Counter(
    "rlef_learner_weights_sent_bytes_total", "Payload bytes sent to receivers (every receiver counted).", ["transport"]
)
PUBLISHED_VERSION = Gauge("rlef_learner_weights_version", "Newest version published (-1: none).", ["transport"])
RECEIVERS = Gauge(
    "rlef_learner_weights_receivers", "Receivers that talked to the hub within the last minute.", ["transport"]
)
HUB_BAD_MESSAGES = Counter(
    "rlef_learner_weights_bad_messages_total", "Malformed or unexpected messages the weights hub dropped.", ["transport"]
)

# ---------------------------------------------------------------- actor (receiver) side
VERSIONS_APPLIED = Counter(
    "rlef_actor_weights_versions_applied_total", "Whole, checksum-verified versions handed to the engine.", ["transport"]
)
RECEIVED_BYTES = Counter("rlef_actor_weights_received_bytes_total", "Payload bytes received.", ["transport"])
RECEIVE_SECONDS = Histogram(
    "rlef_actor_weights_receive_seconds", "From a version's manifest to the verified whole version.",
    ["transport"], buckets=_SECONDS_BUCKETS,
)
CHECKSUM_FAILURES = Counter(
    "rlef_actor_weights_checksum_failures_total", "Versions whose payload failed verification (never applied).",
    ["transport"],
)
RECEIVER_BAD_MESSAGES = Counter(
    "rlef_actor_weights_bad_messages_total", "Malformed or unexpected weights messages a receiver dropped.", ["transport"]
)
RECEIVER_RESTARTS = Counter(
    "rlef_actor_weights_transfer_restarts_total", "Transfers restarted (stall, superseded, corrupt).", ["transport", "reason"]
)
RECEIVED_VERSION = Gauge("rlef_actor_weights_version", "Newest complete version received (-1: none).", ["transport"])
