"""Sandboxes for a standalone ``rlef evaluate``: an executor broker and N executors started as child processes.

Scope: ``rlef evaluate --executors N`` (and the launcher's final evaluation) must not depend on a training
run's executors. The children are the ordinary ``rlef executor-broker`` / ``rlef executor`` commands with
the same config file (their ports come from it), started in their own sessions and stopped (SIGTERM, then
SIGKILL) when the block ends, whatever happened inside it. Their output goes to ``log_dir``.

:func:`probe` answers the other half of "standalone": before any episode runs, one trivial job must come back
within ``timeout_s``, otherwise the evaluation fails at once with the endpoint it tried, instead of turning
every episode into a sandbox error indistinguishable from a bad model. When the evaluation started the
sandboxes itself (``children``), their start-up does not count against ``timeout_s``: on a loaded machine a
niced broker and executor can take well over a minute to import and bind (measured: more than 90 s on 2
cores at load 14), and a 30 s probe then failed an evaluation whose executors were only slow to start. The
probe is resent every ``timeout_s`` while every child is alive, for up to ``startup_s``, and fails at once
when a child has exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlef.common.errors import RlefError


class NoExecutorError(RlefError):
    """No executor answered a probe job at the configured broker endpoint."""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlef.common.cli", *args]


def private_endpoints() -> list[str]:
    """Config overrides that give an evaluation's own sandboxes ports nobody else uses.

    The config's ports belong to a run: the final evaluation of ``rlef launch`` reads the run's config while
    that run's broker may still be closing, and two evaluations on one machine share a config; either way the
    local broker failed with "Address already in use". Its metrics are not scraped, so it serves none."""
    from rlef.monitoring.promconfig import free_port

    return ["endpoints.broker_host=127.0.0.1", f"endpoints.broker_frontend_port={free_port()}",
            f"endpoints.broker_backend_port={free_port()}", "executor.metrics_port=0"]


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


#: Longest start-up of local sandboxes (``children`` of :func:`probe`) before the probe gives up.
LOCAL_STARTUP_S = 300.0


def _exited(children: Sequence[subprocess.Popen]) -> subprocess.Popen | None:
    return next((p for p in children if p.poll() is not None), None)


def _role(proc: subprocess.Popen) -> str:
    """``executor-broker`` / ``executor-0`` for a child of :func:`local_sandboxes`, else its command line."""
    args = [str(a) for a in proc.args] if isinstance(proc.args, (list, tuple)) else [str(proc.args)]
    if "rlef.common.cli" in args[:-1]:
        i = args.index("rlef.common.cli") + 1
        return args[i] + (f"-{args[i + 2]}" if args[i + 1:i + 2] == ["--index"] and len(args) > i + 2 else "")
    return " ".join(args)[:120]


def probe(
    config: Any, timeout_s: float = 30.0, *, children: Sequence[subprocess.Popen] = (), startup_s: float = LOCAL_STARTUP_S,
    log_dir: Path | None = None,
) -> float:
    """Send one trivial job to the configured broker; seconds until it came back. Raises NoExecutorError.

    ``children``: the local broker and executors this evaluation started (:func:`local_sandboxes`): the probe
    is resent every ``timeout_s`` until ``max(timeout_s, startup_s)`` seconds have passed, as long as every
    child is alive; one that exited fails the probe at once (module docstring)."""
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.messages import ExecutionJob, Limits, TestCase
    from rlef.common.protocol.transport import Transport

    endpoint = config.endpoints.broker(config.endpoints.broker_frontend_port)
    started = time.monotonic()
    deadline = started + (max(timeout_s, startup_s) if children else timeout_s)
    logs = f" (its output is in {log_dir})" if log_dir is not None else ""
    with Transport(config.transport) as transport:
        while True:
            dead = _exited(children)
            if dead is not None:
                raise NoExecutorError(
                    f"the local {_role(dead)} (pid {dead.pid}) exited with code {dead.returncode} "
                    f"before an executor answered at {endpoint}{logs}")
            attempt = time.monotonic()
            wait = max(0.1, min(timeout_s, deadline - attempt))
            client = ExecutionClient(transport, endpoint, client_id=f"evaluate-probe-{os.getpid()}", timeout_s=wait)
            try:
                job = ExecutionJob(job_id=f"probe-{os.getpid()}-{time.time_ns()}", code="print(1)\n",
                                   tests=[TestCase(input="", output="1\n")], limits=Limits(time_s=5, memory_bytes=256 << 20))
                result = client.run_sync(job)
            finally:
                client.close()
            if result.passed or not children or time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(1.0 - (time.monotonic() - attempt), deadline - time.monotonic())))  # no hot loop on a quick failure
    if not result.passed:
        waited = time.monotonic() - started
        started_here = (f" (the local sandboxes this evaluation started did not answer in {waited:.0f} s{logs})"
                        if children else "")
        raise NoExecutorError(
            f"no executor answered at {endpoint} within {timeout_s:.0f} s ({result.error or result.status}){started_here}: start "
            "`rlef executor-broker` and `rlef executor` with this config, or pass --executors N to start local ones"
        )
    return time.monotonic() - started
