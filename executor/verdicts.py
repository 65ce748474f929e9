"""What one test's run means: a runner report (and, with cgroups, the test's cgroup usage) as a TestResult.

The runner (executor/runner.py) reports how the test's own process ended; :func:`classify` turns that into
the status the model is scored and given feedback on (pass, wrong_answer, timeout, oom, runtime_error,
output_limit, sandbox_error), with the output compared by :func:`rlef.executor.checker.outputs_match`.
"""

from __future__ import annotations

import signal

from rlef.common.protocol.messages import Limits, TestResult
from rlef.executor.cgroups import TestUsage
from rlef.executor.checker import outputs_match
from rlef.executor.nsjail import JAIL_RUNNER


def clean_paths(text: str) -> str:
    """Hide sandbox internals from tracebacks (the program is always "main.py")."""
    return text.replace(JAIL_RUNNER, "runner")


def is_memory_error(stderr: str) -> bool:
    """The program died of its address-space limit (a failed allocation it reported itself)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        last.startswith("MemoryError")
        or "Cannot allocate memory" in stderr
        or "std::bad_alloc" in stderr
        or "out of memory" in stderr.lower()
    )


def classify(
    header: dict, stdout: bytes, stderr: bytes, expected: str, limits: Limits, usage: TestUsage | None = None
) -> TestResult:
    """Turn one runner report (and, with cgroups, the test's cgroup usage) into a TestResult.

    With ``usage`` (cgroups): CPU time is every process of the test together, ``timeout`` when it reached the
    limit (the host killed the test there), ``oom`` when the cgroup's own OOM counter moved or the program
    died of its address-space limit (MemoryError). Without (weak limits): CPU time is the test's own process,
    and a SIGKILL nobody sent is presumed to be the kernel's OOM killer.
    """
    out = stdout.decode("utf-8", errors="replace")
    err = clean_paths(stderr.decode("utf-8", errors="replace"))
    kind = header.get("status")
    sig = header.get("signal")
    exit_code = header.get("exit_code")
    if sig is not None:
        exit_code = -int(sig)
    cpu_s = float(header.get("cpu_s", 0.0))
    memory: int | None = header.get("maxrss_bytes")
    if usage is not None:
        cpu_s, memory = usage.cpu_s, usage.memory_peak_bytes
    over_cpu = usage is not None and (usage.killed_for_cpu or usage.cpu_s > limits.time_s)
    if kind in ("timeout", "output_limit"):
        status = kind
    elif kind in ("ok", "exit") and over_cpu:
        status = "timeout"
    elif kind in ("ok", "exit") and usage is not None and usage.oom_kills > 0:
        # The kernel killed a process of this test at the test's memory limit: the test is over its limit,
        # whatever the surviving parent printed or returned afterwards.
        status = "oom"
    elif kind == "ok":
        status = "pass" if outputs_match(expected, out) else "wrong_answer"
    elif kind == "exit":
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and float(header.get("cpu_s", 0.0)) >= limits.time_s):
            status = "timeout"
        elif usage is not None:
            status = "oom" if is_memory_error(err) else "runtime_error"
        elif is_memory_error(err) or sig == signal.SIGKILL:
            # Weak limits: a SIGKILL we did not send (the runner reports its own kills as timeout/output_limit)
            # is presumed to be the kernel's memory killer.
            status = "oom"
        else:
            status = "runtime_error"
    else:
        status = "sandbox_error"
        err = str(header.get("error", f"runner reported {kind!r}"))
    return TestResult(
        status=status, stdout=out, stderr=err, time_s=float(header.get("time_s", 0.0)), exit_code=exit_code,
        cpu_s=max(0.0, cpu_s), memory_bytes=int(memory) if memory is not None else None,
    )
