"""Workers and the broker coming and going while jobs run (real processes, fast heartbeats)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers.executor_service import metrics_ports, scrape_value, start_executor_service, two_free_ports, wait_scraped

from rlef.common.config import TransportConfig
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, Limits
from rlef.common.protocol.messages import TestCase as Case
from rlef.common.protocol.transport import Transport

FAST_HEARTBEATS = ["executor.heartbeat_interval_s=0.2", "executor.heartbeat_liveness=3"]


def slow_job(tests: int = 30, seconds: float = 0.1) -> ExecutionJob:
    code = f"import time\ntime.sleep({seconds})\nprint(input())\n"
    return ExecutionJob(job_id=uuid.uuid4().hex, code=code, tests=[Case(input=str(i), output=str(i)) for i in range(tests)],
                        limits=Limits(time_s=5.0, memory_bytes=1 << 28))


def submit_in_background(endpoint: str, job: ExecutionJob, timeout_s: float = 60.0) -> tuple[threading.Thread, dict]:
    box: dict[str, ExecutionResult] = {}

    def run() -> None:
        with Transport(TransportConfig()) as transport:
            client = ExecutionClient(transport, endpoint, client_id="failover", timeout_s=timeout_s)
            box["result"] = client.run_sync(job)
            client.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


@pytest.mark.slow
def test_job_survives_its_worker_being_killed(tmp_path: Path) -> None:
    port = metrics_ports(2)
    with start_executor_service(tmp_path, workers=1, executors=2, overrides=[*FAST_HEARTBEATS, f"executor.metrics_port={port}"]) as service:
        wait_scraped(port - 1, "rlef_executor_broker_workers_idle", 2.0)  # both executors registered
        thread, box = submit_in_background(service.frontend, slow_job())
        # The precondition: the job runs on one executor's sandbox (then kill -9 that executor).
        deadline = time.monotonic() + 120
        busy = [scrape_value(port + i, "rlef_executor_busy_sandboxes") for i in (0, 1)]
        while sorted(busy) != [0.0, 1.0]:
            assert time.monotonic() < deadline and thread.is_alive(), f"the job never ran on a sandbox: {busy}"
            time.sleep(0.05)
            busy = [scrape_value(port + i, "rlef_executor_busy_sandboxes") for i in (0, 1)]
        victim = busy.index(1.0)
        service.kill_executor(victim)
        thread.join(90)
        result = box["result"]
        assert result.passed, (result, service.logs())
        assert result.attempts == 2
        assert result.worker_id.startswith(f"test-executor-{1 - victim}/")
        assert f"requeued: worker test-executor-{victim}/" in service.logs()


@pytest.mark.slow
def test_job_gives_up_after_max_retries(tmp_path: Path) -> None:
    with start_executor_service(tmp_path, workers=1, overrides=[*FAST_HEARTBEATS, "executor.max_retries=0"]) as service:
        thread, box = submit_in_background(service.frontend, slow_job())
        time.sleep(0.5)
        service.kill_executor(0, signal.SIGKILL)
        thread.join(30)
        result = box["result"]
        assert result.status == "sandbox_error"
        assert "gave up" in result.error
        assert result.attempts == 1


@pytest.mark.slow
def test_graceful_executor_stop_requeues_at_once(tmp_path: Path) -> None:
    # Long liveness: only the executor's "stop" message can make the broker requeue quickly.
    port = metrics_ports(2)
    overrides = ["executor.heartbeat_interval_s=0.2", "executor.heartbeat_liveness=1000", f"executor.metrics_port={port}"]
    with start_executor_service(tmp_path, workers=1, executors=2, overrides=overrides) as service:
        wait_scraped(port - 1, "rlef_executor_broker_workers_idle", 2.0)
        jobs = [slow_job() for _ in range(2)]
        started = [submit_in_background(service.frontend, j) for j in jobs]
        # The precondition (was a bare 0.5 s sleep): each executor's one sandbox is running one of the jobs.
        for i in (0, 1):
            wait_scraped(port + i, "rlef_executor_busy_sandboxes", 1.0)
        service.kill_executor(0, signal.SIGTERM)
        assert service.executors[0].returncode == 0, service.logs()  # a clean stop, not a crash
        for thread, _ in started:
            thread.join(90)
        results = [box["result"] for _, box in started]
        assert all(r.passed for r in results), (results, service.logs())
        # Executor 0's job was requeued on its stop message and ran again on executor 1.
        (moved,) = [r for r in results if r.attempts == 2]
        assert sorted(r.attempts for r in results) == [1, 2]
        assert all(r.worker_id.startswith("test-executor-1/") for r in results), [r.worker_id for r in results]
        assert f"job {moved.job_id} requeued: worker test-executor-0/" in service.logs()
        assert "said stop" in service.logs()


@pytest.mark.slow
def test_workers_rejoin_a_restarted_broker(tmp_path: Path) -> None:
    with start_executor_service(tmp_path, workers=1, overrides=FAST_HEARTBEATS) as service:
        assert service.broker is not None
        service.broker.kill()
        service.broker.wait()
        service.start_broker()
        service.wait_ready(30)
        with Transport(TransportConfig()) as transport:
            client = ExecutionClient(transport, service.frontend, client_id="after-restart", timeout_s=30)
            assert client.run_sync(slow_job(tests=2, seconds=0)).passed
            client.close()


def test_executor_refuses_to_start_without_a_working_sandbox(tmp_path: Path) -> None:
    import subprocess
    import sys

    rlef = str(Path(sys.executable).with_name("rlef"))
    proc = subprocess.run(
        [rlef, "executor", "executor.nsjail=/nonexistent/nsjail", "executor.metrics_port=0", "executor.workers=1"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert "nsjail not found" in proc.stderr



@pytest.mark.slow
def test_metrics_are_served(tmp_path: Path) -> None:
    import urllib.request

    port = two_free_ports()
    with start_executor_service(tmp_path, workers=1, overrides=[f"executor.metrics_port={port}"]):
        executor = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        broker = urllib.request.urlopen(f"http://127.0.0.1:{port - 1}/metrics", timeout=10).read().decode()
    assert 'rlef_executor_jobs_total{status="pass"}' in executor  # the readiness probe passed through it
    assert 'rlef_executor_tests_total{status="pass"}' in executor
    assert "rlef_executor_test_duration_seconds_bucket" in executor
    modes = {mode: f'rlef_executor_limits_mode{{mode="{mode}"}} 1.0' in executor for mode in ("v1", "v2", "weak")}
    assert sum(modes.values()) == 1 and not modes["weak"], modes  # cgroups work here (test_executor_limits)
    assert 'rlef_role_info{id="test-executor-0",role="executor"' in executor
    assert "rlef_executor_broker_workers_alive 1.0" in broker
    assert 'rlef_executor_broker_jobs_total{outcome="completed"}' in broker
    assert "rlef_executor_broker_queue_depth 0.0" in broker


@pytest.mark.slow
def test_service_over_curve(tmp_path: Path) -> None:
    from rlef.common.protocol.transport import generate_keys

    keys = generate_keys(tmp_path / "keys")
    overrides = [f"transport.curve_keys_dir={keys}"]
    # The readiness probe speaks plain TCP, which CURVE refuses: start without it and probe securely here.
    with start_executor_service(tmp_path / "logs", workers=1, overrides=overrides, ready_timeout_s=0) as service:
        secure = TransportConfig(curve_keys_dir=keys)
        with Transport(secure) as transport:
            client = ExecutionClient(transport, service.frontend, client_id="curve", timeout_s=60)
            assert client.run_sync(slow_job(tests=2, seconds=0)).passed
            client.close()
        with Transport(TransportConfig()) as transport:  # no keys: no handshake, no answer
            client = ExecutionClient(transport, service.frontend, client_id="plain", timeout_s=1.0)
            assert client.run_sync(slow_job(tests=1, seconds=0)).error
            client.close()


@pytest.mark.slow
def test_a_broker_restart_resends_the_jobs_in_flight(tmp_path: Path) -> None:
    """Issue 11 item 6: the broker dies (SIGKILL) while it runs a job; it restarts on the same ports; the
    client re-sends the job under its job_id and gets its real result, long before its 120 s timeout."""
    import asyncio
    import urllib.request

    from rlef.monitoring import metrics_execution_client as mc

    port = two_free_ports()

    def broker_in_flight() -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port - 1}/metrics", timeout=5).read().decode()
        except OSError:
            return -1.0
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("rlef_executor_broker_in_flight "))

    overrides = [*FAST_HEARTBEATS, f"executor.metrics_port={port}"]
    with start_executor_service(tmp_path, workers=1, overrides=overrides) as service:
        assert service.broker is not None
        job = slow_job(tests=20, seconds=0.2)
        resent0 = mc.CLIENT_RESENT._value.get()

        async def scenario() -> ExecutionResult:
            transport = Transport(TransportConfig(), asyncio=True)
            client = ExecutionClient(transport, service.frontend, client_id="resend", timeout_s=120)
            try:
                task = asyncio.create_task(client.run(job))
                # The precondition: the broker holds the job (dispatched to the worker) when it is killed.
                deadline = time.monotonic() + 60
                while await asyncio.to_thread(broker_in_flight) != 1.0:
                    assert time.monotonic() < deadline and not task.done(), "the job never reached a worker"
                    await asyncio.sleep(0.05)
                service.broker.kill()
                service.broker.wait()
                service.start_broker()
                result = await task
                assert client.timeouts == 0 and client.resent >= 1
                return result
            finally:
                client.close()
                transport.close()

        result = asyncio.run(scenario())
    assert result.error == "" and result.passed and len(result.tests) == 20, result.error
    assert mc.CLIENT_RESENT._value.get() - resent0 >= 1
