"""Start a real executor broker and real executor processes for tests of any role.

Importable from any test (pytest's ``pythonpath`` holds tests/):
``from helpers.executor_service import start_executor_service``::

    with start_executor_service(tmp_path, workers=2) as service:
        client = ExecutionClient(Transport(TransportConfig()), service.frontend, client_id="t", timeout_s=60)

``service.frontend`` is the broker's requester endpoint; ``service.overrides`` the config overrides the
processes got (ports, workers, metrics off); ``service.add_executor()`` / ``service.kill_executor(i)``
change the pool while it runs. Logs go to ``log_dir/{broker,executor-N}.log``. Everything started is
stopped (SIGTERM, then SIGKILL) on exit. Ready means a probe job has passed through the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.processes import stop_process_groups

ROOT = Path(__file__).resolve().parents[2]
RLEF = str(Path(sys.executable).with_name("rlef"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_free_ports() -> int:
    """A port p with p - 1 free too (the broker serves metrics on executor.metrics_port - 1)."""
    return metrics_ports(1)


def metrics_ports(executors: int) -> int:
    """A port p with p - 1 .. p + executors - 1 free: with ``executor.metrics_port=p`` the broker serves
    metrics on p - 1 and executor i on p + i."""
    for _ in range(100):
        port = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for q in range(port - 1, port + executors):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", q))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {executors + 1} consecutive free ports")


def scrape_value(port: int, sample: str) -> float | None:
    """The value of ``sample`` (a sample line's name and labels, e.g. ``rlef_executor_busy_sandboxes``) on
    http://127.0.0.1:port/metrics; None while nothing answers there or the sample is absent."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.rsplit(" ", 1)[0] == sample), None)


def wait_scraped(port: int, sample: str, value: float, timeout_s: float = 120.0) -> None:
    """Block until ``sample`` on port's /metrics equals ``value`` (raise AssertionError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while (seen := scrape_value(port, sample)) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sample} on :{port} is {seen} after {timeout_s:.0f} s, waited for {value}")
        time.sleep(0.05)


@dataclass
class ExecutorService:
    log_dir: Path
    overrides: list[str]
    frontend: str
    broker: subprocess.Popen | None = None
    executors: list[subprocess.Popen] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                [RLEF, *args, "--config", str(ROOT / "configs/tiny-cpu.yaml"), *self.overrides],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )
        finally:
            log.close()

    def start_broker(self) -> None:
        self.broker = self._spawn("broker", ["executor-broker"])

    def add_executor(self) -> subprocess.Popen:
        index = len(self.executors)
        proc = self._spawn(f"executor-{index}", ["executor", "--index", str(index), "--id", f"test-executor-{index}"])
        self.executors.append(proc)
        return proc

    def kill_executor(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.executors[index]
        # The whole session: the executor and its jails.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until a probe job comes back passed through the broker."""
        from rlef.common.config import TransportConfig
        from rlef.common.protocol.execution_client import ExecutionClient
        from rlef.common.protocol.messages import ExecutionJob, Limits, TestCase
        from rlef.common.protocol.transport import Transport

        deadline = time.monotonic() + timeout_s
        with Transport(TransportConfig()) as transport:
            client = ExecutionClient(transport, self.frontend, client_id="probe", timeout_s=5.0)
            try:
                while time.monotonic() < deadline:
                    for proc in [self.broker, *self.executors]:
                        if proc is not None and proc.poll() is not None:
                            raise RuntimeError(f"service process exited with {proc.returncode}:\n{self.logs()}")
                    job = ExecutionJob(job_id=f"probe-{uuid.uuid4().hex}", code="print(input())",
                                       tests=[TestCase(input="ok", output="ok")], limits=Limits(time_s=5, memory_bytes=1 << 28))
                    if client.run_sync(job).passed:
                        return
            finally:
                client.close()
        raise TimeoutError(f"executor service not ready after {timeout_s} s:\n{self.logs()}")

    def stop(self) -> None:
        stop_process_groups([p for p in [*self.executors, self.broker] if p is not None], timeout_s=5)


@contextlib.contextmanager
def start_executor_service(
    log_dir: Path, *, workers: int = 2, executors: int = 1, overrides: list[str] | None = None, ready_timeout_s: float = 60.0
) -> Iterator[ExecutorService]:
    """A broker plus ``executors`` executor processes of ``workers`` sandboxes each, on free ports."""
    log_dir.mkdir(parents=True, exist_ok=True)
    frontend_port, backend_port = free_port(), free_port()
    all_overrides = [
        f"endpoints.broker_frontend_port={frontend_port}",
        f"endpoints.broker_backend_port={backend_port}",
        f"executor.workers={workers}",
        "executor.metrics_port=0",
        *(overrides or []),
    ]
    service = ExecutorService(log_dir, all_overrides, f"tcp://127.0.0.1:{frontend_port}")
    try:
        service.start_broker()
        for _ in range(executors):
            service.add_executor()
        if ready_timeout_s > 0:  # 0: the caller checks readiness itself (e.g. over CURVE)
            service.wait_ready(ready_timeout_s)
        yield service
    finally:
        service.stop()
