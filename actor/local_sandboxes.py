"""Sandboxes for a standalone ``rlef evaluate``: an executor broker and N executors started as child processes.

Scope: ``rlef evaluate --executors N`` (and the launcher's final evaluation) must not depend on a training
run's executors. The children are the ordinary ``rlef executor-broker`` / ``rlef executor`` commands with
the same config file (their ports come from it), started in their own sessions and stopped (SIGTERM, then
SIGKILL) when the block ends, whatever happened inside it. Their output goes to ``log_dir``.

:func:`probe` answers the other half of "standalone": before any episode runs, one trivial job must come back
within ``timeout_s``, otherwise the evaluation fails at once with the endpoint it tried, instead of turning
every episode into a sandbox error indistinguishable from a bad model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlef.common.errors import RlefError


class NoExecutorError(RlefError):
    """No executor answered a probe job at the configured broker endpoint."""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlef.common.cli", *args]


@contextlib.contextmanager
def local_sandboxes(config_path: Path, executors: int, log_dir: Path, overrides: list[str] = ()) -> Iterator[list[subprocess.Popen]]:
    """Run a broker and ``executors`` executors (config ``config_path`` plus ``overrides``) for the block."""
    if executors < 1:
        raise ValueError(f"--executors must be at least 1, got {executors}")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    files = []
    try:
        roles = [("executor-broker", ["executor-broker"])] + [
            (f"executor-{i}", ["executor", "--index", str(i)]) for i in range(executors)
        ]
        for name, args in roles:
            out = open(log_dir / f"{name}.log", "ab")
            files.append(out)
            cmd = _command(*args, "--config", str(config_path), *overrides)
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for f in files:
            f.close()


def probe(config: Any, timeout_s: float = 30.0) -> float:
    """Send one trivial job to the configured broker; seconds until it came back. Raises NoExecutorError."""
    from rlef.common.execution_client import ExecutionClient
    from rlef.common.messages import ExecutionJob, Limits, TestCase
    from rlef.common.transport import Transport

    endpoint = config.endpoints.broker(config.endpoints.broker_frontend_port)
    started = time.monotonic()
    with Transport(config.transport) as transport:
        client = ExecutionClient(transport, endpoint, client_id=f"evaluate-probe-{os.getpid()}", timeout_s=timeout_s)
        try:
            job = ExecutionJob(job_id=f"probe-{os.getpid()}-{time.time_ns()}", code="print(1)\n",
                               tests=[TestCase(input="", output="1\n")], limits=Limits(time_s=5, memory_bytes=256 << 20))
            result = client.run_sync(job)
        finally:
            client.close()
    if not result.passed:
        raise NoExecutorError(
            f"no executor answered at {endpoint} within {timeout_s:.0f} s ({result.error or result.status}): start "
            "`rlef executor-broker` and `rlef executor` with this config, or pass --executors N to start local ones"
        )
    return time.monotonic() - started
