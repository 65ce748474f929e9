"""Metric plumbing shared by every role: the /metrics server and the info/heartbeat series.

Role-specific metric definitions live beside this file in ``metrics_<role>.py`` (one module per role, all
following Prometheus naming: ``rlef_<role>_<what>_<unit>``, counters end in ``_total``, base units).
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Info, start_http_server

ROLE_INFO = Info("rlef_role", "Identity of this process: role, id, package version.")
HEARTBEAT = Gauge("rlef_heartbeat_timestamp_seconds", "Unix time of this process' last main-loop iteration.")
POLICY_VERSION = Gauge("rlef_policy_version", "Policy (weights) version this process holds; -1 before the first.")


def serve_metrics(role: str, process_id: str, port: int, registry: CollectorRegistry = REGISTRY) -> int | None:
    """Start the /metrics HTTP server (port 0 = none) and publish the identity series; returns the port."""
    from importlib.metadata import version

    ROLE_INFO.info({"role": role, "id": process_id, "version": version("rlef")})
    POLICY_VERSION.set(-1)
    beat()
    if port <= 0:
        return None
    start_http_server(port, registry=registry)
    return port


def beat(policy_version: int | None = None) -> None:
    """Mark the main loop alive (alert rules fire on a stale heartbeat)."""
    HEARTBEAT.set(time.time())
    if policy_version is not None:
        POLICY_VERSION.set(policy_version)
