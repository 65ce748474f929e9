"""A live run for monitoring tests: real executor broker + executors, real Prometheus scraping them.

``live_run`` (session scope) starts the broker and one executor (2 sandboxes) with metrics on free ports,
writes their file_sd targets, starts Debian's prometheus (1 s scrape/evaluation) on a temp TSDB, and keeps a
mix of jobs (pass, wrong answer, runtime error, syntax error, timeout) flowing from a background thread until
the session ends, so counters keep moving while tests query.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.executor_service import start_executor_service  # noqa: E402

from rlef.monitoring.prometheus_api import PrometheusAPI  # noqa: E402
from rlef.monitoring.promconfig import free_port, start_prometheus, write_prometheus_config  # noqa: E402
from rlef.monitoring.targets import write_targets  # noqa: E402

JOB_MIX = [
    ("print(input())", "pass"),
    ("print('nope')", "wrong_answer"),
    ("raise ValueError('boom')", "runtime_error"),
    ("def f(:\n  pass", "syntax_error"),
    ("import time\ntime.sleep(5)", "timeout"),
]


def _port_block(size: int) -> int:
    """A base port such that base-1 .. base+size-1 are free now (broker uses metrics_port - 1)."""
    for _ in range(50):
        base = free_port() + 1
        ok = True
        for port in range(base - 1, base + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports")


@dataclass
class LiveRun:
    prometheus: PrometheusAPI
    run_dir: Path
    jobs_done: list[int]
    #: Prometheus jobs this run started (dashboard panels needing others only get their syntax checked).
    roles: frozenset[str]


def _job_load(frontend: str, stop: threading.Event, done: list[int]) -> None:
    from rlef.common.config import TransportConfig
    from rlef.common.execution_client import ExecutionClient
    from rlef.common.messages import ExecutionJob, Limits, TestCase
    from rlef.common.transport import Transport

    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, frontend, client_id="monitoring-load", timeout_s=30)
        try:
            while not stop.is_set():
                jobs = [
                    ExecutionJob(job_id=uuid.uuid4().hex, code=code, tests=[TestCase(input="a", output="a"), TestCase(input="b", output="b")],
                                 limits=Limits(time_s=0.5, memory_bytes=1 << 28))
                    for code, _ in JOB_MIX
                ]
                client.run_many_sync(jobs)
                done[0] += len(jobs)
                stop.wait(0.5)
        finally:
            client.close()


@pytest.fixture(scope="session")
def live_run(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run scripts/setup.sh (apt prometheus)")
    run_dir = tmp_path_factory.mktemp("monitoring-run")
    base = _port_block(2)
    with start_executor_service(run_dir / "logs", workers=2, executors=1, overrides=[f"executor.metrics_port={base}"]) as service:
        targets = write_targets(
            run_dir / "prometheus" / "targets" / "local.json",
            [("executor-broker", f"127.0.0.1:{base - 1}", {"id": "broker"}), ("executor", f"127.0.0.1:{base}", {"id": "0"})],
        )
        config = write_prometheus_config(run_dir / "prometheus", [targets.parent / "*.json"], scrape_interval_s=1.0)
        port = free_port()
        prom = start_prometheus(config, run_dir / "prometheus" / "tsdb", port, run_dir / "logs" / "prometheus.log")
        stop = threading.Event()
        done = [0]
        load = threading.Thread(target=_job_load, args=(service.frontend, stop, done), daemon=True)
        load.start()
        try:
            yield LiveRun(PrometheusAPI(f"http://127.0.0.1:{port}"), run_dir, done, frozenset({"executor", "executor-broker"}))
        finally:
            stop.set()
            load.join(60)
            prom.terminate()
            prom.wait(15)
