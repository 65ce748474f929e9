"""Metrics of the control channel (rlef.common.protocol.control_hub): registration, heartbeats, versions, stop.

Hub side (``rlef_learner_control_*``, learner rank 0) and peer side (``rlef_actor_control_*``, every process
with a ControlClient: actors and the evaluator) live in one module because both ends are in
``rlef.common.protocol.control_hub``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# ---------------------------------------------------------------- learner (hub) side
CONTROL_PEERS = Gauge("rlef_learner_control_peers", "Peers registered on the control channel and alive.")
CONTROL_BAD_MESSAGES = Counter(
    "rlef_learner_control_bad_messages_total", "Malformed or unexpected control messages dropped by the hub."
)
CONTROL_PEERS_REFUSED = Counter(
    "rlef_learner_control_peers_refused_total",
    "Registrations the hub refused because the peer's shared config (rlef.common.protocol.config_digest) differs.",
)

# ---------------------------------------------------------------- peer side
CONTROL_HUB_VERSION = Gauge("rlef_actor_control_hub_version", "The hub's version as last heard on the control channel.")
CONTROL_HUB_RESTARTS = Counter(
    "rlef_actor_control_hub_restarts_total", "Hub restarts a peer noticed (the hub's incarnation nonce changed)."
)
CONTROL_CLIENT_BAD_MESSAGES = Counter(
    "rlef_actor_control_bad_messages_total", "Malformed or unexpected control messages an actor dropped."
)
