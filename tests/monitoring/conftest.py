"""A live run for monitoring tests: a real short CPU training run, real Prometheus scraping it.

``live_run`` (session scope) starts the executor broker and one executor (2 sandboxes), the learner (one
rank, FSDP2 on gloo) and one actor (transformers backend, the tiny model) with metrics on free ports, writes
their file_sd targets, starts Debian's prometheus (1 s scrape/evaluation) on a temp TSDB, and keeps an extra
mix of jobs (pass, wrong answer, runtime error, syntax error, timeout) flowing to the executors from a
background thread, so every status shows up. It returns once Prometheus has seen a learner update and an
actor applying new weights (or fails with the processes' logs). Everything is stopped at session end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


from helpers.executor_service import RLEF, ROOT, start_executor_service
from helpers.processes import stop_process_groups

from rlef.monitoring.prometheus_api import PrometheusAPI
from rlef.monitoring.promconfig import free_port, start_prometheus, write_prometheus_config
from rlef.monitoring.targets import write_targets

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
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.messages import ExecutionJob, Limits, TestCase
    from rlef.common.protocol.transport import Transport

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
                stop.wait(1.0)
        finally:
            client.close()


def _spawn(name: str, args: list[str], log_dir: Path) -> subprocess.Popen:
    with open(log_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen([RLEF, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    stop_process_groups(procs, timeout_s=8)


def _logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(log_dir.glob("*.log")))


#: Jobs of the live run; dashboard panels needing others only get their syntax checked.
ROLES = frozenset({"actor", "learner", "executor", "executor-broker"})


# Package scope: the run trains on both cores until it is stopped, so it ends with tests/monitoring instead of
# running under every later folder's tests (tests/weights' peer processes starved beside it and timed out).
@pytest.fixture(scope="package")
def live_run(tmp_path_factory, tiny_model_dir):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run scripts/setup.sh (apt prometheus)")
    run_dir = tmp_path_factory.mktemp("monitoring-run")
    log_dir = run_dir / "logs"
    base = _port_block(2)
    learner_port, actor_port = free_port(), free_port()
    overrides = [
        f"executor.metrics_port={base}",
        f"learner.metrics_port={learner_port}",
        f"actor.metrics_port={actor_port}",
        f"endpoints.rollout_port={free_port()}",
        f"endpoints.weights_port={free_port()}",
        f"endpoints.control_port={free_port()}",
        f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        f"model.path={tiny_model_dir}",
        "learner.batch_rollouts=4",
        "learner.updates_per_batch=2",
        "learner.total_updates=1000000",
        "learner.checkpoint.every_batches=100000",
        "deploy.max_batches=100000",
        "actor.episodes_in_flight=4",
        "actor.sampling.max_new_tokens=48",
    ]
    with start_executor_service(log_dir, workers=2, executors=1, overrides=overrides) as service:
        role_args = ["--config", str(ROOT / "configs/tiny-cpu.yaml"), *service.overrides]
        procs = [_spawn("learner", ["learner", *role_args], log_dir), _spawn("actor", ["actor", *role_args], log_dir)]
        prom = None
        stop = threading.Event()
        load = None
        try:
            targets = write_targets(
                run_dir / "prometheus" / "targets" / "local.json",
                [
                    ("executor-broker", f"127.0.0.1:{base - 1}", {"id": "broker"}),
                    ("executor", f"127.0.0.1:{base}", {"id": "0"}),
                    ("learner", f"127.0.0.1:{learner_port}", {"id": "rank0", "rank": "0"}),
                    ("actor", f"127.0.0.1:{actor_port}", {"id": "0"}),
                ],
            )
            config = write_prometheus_config(run_dir / "prometheus", [targets.parent / "*.json"], scrape_interval_s=1.0)
            port = free_port()
            prom = start_prometheus(config, run_dir / "prometheus" / "tsdb", port, log_dir / "prometheus.log")
            done = [0]
            load = threading.Thread(target=_job_load, args=(service.frontend, stop, done), daemon=True)
            load.start()
            api = PrometheusAPI(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 420
            ready = "max(rlef_learner_updates_total) > 0 and on() max(rlef_actor_weights_applied_total) > 0"
            while not api.query(ready):
                dead = [p.args[1] for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    pytest.fail(f"live run not training ({'exited: ' + ', '.join(dead) if dead else 'timeout'}):\n{_logs(log_dir)}")
                time.sleep(2)
            yield LiveRun(api, run_dir, done, ROLES)
        finally:
            stop.set()
            _stop(procs)
            if load is not None:
                load.join(60)
            if prom is not None:
                prom.terminate()
                prom.wait(15)
