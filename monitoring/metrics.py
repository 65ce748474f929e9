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

import http.client
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Info
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder, make_wsgi_app

from rlef.common.log_limit import LogLimiter

ROLE_INFO = Info("rlef_role", "Identity of this process: role, id, package version.")
HEARTBEAT = Gauge("rlef_heartbeat_timestamp_seconds", "Unix time of this process' last main-loop iteration.")
POLICY_VERSION = Gauge("rlef_policy_version", "Policy (weights) version this process holds; -1 before the first.")
HTTP_ERRORS = Counter(
    "rlef_process_metrics_http_errors_total", "Requests to this process' /metrics endpoint refused or failed, by "
    "cause: bad_request (not HTTP the server could parse), bad_accept (an Accept header it cannot honour), busy "
    "(over the concurrent-connection cap), timeout (nothing read in time), client_gone, error.", ["cause"],
)

log = logging.getLogger(__name__)

#: An idle or slow connection to /metrics holds a thread for at most this long.
HTTP_TIMEOUT_S = 10.0
#: Connections served at once; more are closed at once (counted as busy). Prometheus needs one.
HTTP_MAX_CONNECTIONS = 32
_http_log = LogLimiter(log, "/metrics endpoint: failed requests")

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
    start_metrics_server(port, registry)
    return port


class _Handler(WSGIRequestHandler):
    """No access log; a request http.server rejects (``send_error``: 400, 414, 431, 505, ...) is counted and
    logged within the log budget; an idle connection times out (``timeout``: the socket's)."""

    timeout = HTTP_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing: a scrape every few seconds is no news."""

    def log_error(self, format: str, *args: object) -> None:
        HTTP_ERRORS.labels("bad_request").inc()
        _http_log.warning("/metrics endpoint: bad request from %s: %s", self.client_address[0], format % args)


class _Server(ThreadingWSGIServer):
    """prometheus_client's threaded WSGI server with a cap on concurrent connections, and failed requests
    (client gone, timeouts, unparseable headers) counted and logged in one rate-limited line instead of
    socketserver's traceback on stderr for each."""

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(HTTP_MAX_CONNECTIONS)
        self._done_lock = threading.Lock()
        self.connections_done = 0
        """Accepted connections whose handling has ended (answered, refused as busy, or failed): handler threads
        are daemons nobody joins, so this is how a caller knows every connection so far has been dealt with."""

    def _done(self) -> None:
        with self._done_lock:
            self.connections_done += 1

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            HTTP_ERRORS.labels("busy").inc()
            _http_log.warning("/metrics endpoint: %d connections open; closed the one from %s",
                              HTTP_MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            self._done()
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started: the slot is not used (socketserver logs and closes)
            self._slots.release()
            self._done()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._done()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, TimeoutError):
            cause = "timeout"
        elif isinstance(exc, ConnectionError):
            cause = "client_gone"
        elif isinstance(exc, http.client.HTTPException):
            cause = "bad_request"
        else:
            cause = "error"
        HTTP_ERRORS.labels(cause).inc()
        _http_log.warning("/metrics endpoint: request from %s failed (%s): %s: %s", client_address[0], cause,
                          type(exc).__name__, exc)


def _checked_accept(app):
    """``app``, answering 400 to an Accept header prometheus_client's content negotiation fails on (e.g.
    ``text/plain; version=abc`` raised TypeError: a 500 and a traceback on stderr for every such request)."""

    def guarded(environ, start_response):
        accept = environ.get("HTTP_ACCEPT")
        if accept:
            try:
                choose_encoder(accept)
            except (TypeError, ValueError) as exc:
                HTTP_ERRORS.labels("bad_accept").inc()
                _http_log.warning("/metrics endpoint: Accept header %s from %s not understood: %s: %s", accept,
                                  environ.get("REMOTE_ADDR", "?"), type(exc).__name__, exc)
                start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"Accept header not understood\n"]
        return app(environ, start_response)

    return guarded


def start_metrics_server(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "0.0.0.0") -> _Server:
    """Serve ``registry`` on http://addr:port/metrics from a daemon thread (as prometheus_client's
    ``start_http_server``, hardened: see _Server, _Handler, _checked_accept); returns the server."""
    server = make_server(addr, port, _checked_accept(make_wsgi_app(registry)), _Server, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


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
