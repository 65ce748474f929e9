"""The pipes to one running nsjail: framed writes and reads with deadlines, the runner's pids, teardown.

Every read and write has a deadline: a jail that dies or stops answering mid-job raises :class:`JailDied`
carrying the results reported so far (never the program's fault; the caller decides whether to retry).
While a test runs, :class:`CpuWatch` polls the test's cgroup CPU time (every process of the test together)
and kills the group at the limit.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import struct
import subprocess
import time

from rlef.common.errors import SandboxError
from rlef.common.protocol.messages import TestResult
from rlef.executor.cgroups import TestGroup

log = logging.getLogger(__name__)

REAP_GRACE_S = 2.0
# How often the host reads a running test's cgroup CPU time (every process of the test together).
CPU_POLL_S = 0.02


class JailDied(SandboxError):
    """The jail exited or stopped answering in the middle of a job (never the program's fault)."""

    def __init__(self, reason: str, results: list[TestResult]):
        super().__init__(reason)
        self.results = results


class Jail:
    """The pipes to one running nsjail, with deadlines on every read and write."""

    def __init__(self, proc: subprocess.Popen, jail_log, memory: int) -> None:
        self.proc = proc
        self.log = jail_log
        self.memory = memory
        self.retired_at: float | None = None
        self._runner_pid: int | None = None
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin_fd = proc.stdin.fileno()
        self.stdout_fd = proc.stdout.fileno()
        os.set_blocking(self.stdin_fd, False)
        os.set_blocking(self.stdout_fd, False)
        self.readable = selectors.DefaultSelector()
        self.readable.register(self.stdout_fd, selectors.EVENT_READ)
        self.writable = selectors.DefaultSelector()
        self.writable.register(self.stdin_fd, selectors.EVENT_WRITE)

    def died(self, what: str, results: list[TestResult]) -> JailDied:
        code = self.proc.poll()
        self.log.seek(0)
        tail = self.log.read()[-2000:].decode("utf-8", errors="replace").strip()
        state = f"exit code {code}" if code is not None else "still running"
        return JailDied(f"jail {what} ({state}; nsjail said: {tail or 'nothing'})", results)

    def send(self, payload: bytes, timeout: float, results: list[TestResult]) -> None:
        data = memoryview(struct.pack(">I", len(payload)) + payload)
        deadline = time.monotonic() + timeout
        while data:
            try:
                data = data[os.write(self.stdin_fd, data):]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                try:
                    self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    raise self.died("closed its input", results) from None
                raise self.died("exited mid-job", results) from None
            if not self.writable.select(max(0.0, deadline - time.monotonic())):
                raise self.died("did not accept input in time", results)

    def runner_pid(self) -> int | None:
        """Host pid of the runner (nsjail's only child, pid 1 of the jail)."""
        if self._runner_pid is None:
            children = _children(self.proc.pid)
            self._runner_pid = children[0] if len(children) == 1 else None
        return self._runner_pid

    def spare_pids(self) -> list[int]:
        """Host pids of the runner's children: after a report, only the child waiting to run the next test."""
        runner = self.runner_pid()
        return _children(runner) if runner is not None else []

    def _read_exact(
        self, n: int, deadline: float, results: list[TestResult], watch: CpuWatch | None = None
    ) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = os.read(self.stdout_fd, n - len(buf))
            except BlockingIOError:
                remaining = max(0.0, deadline - time.monotonic())
                if watch is not None and watch.active:
                    if not self.readable.select(min(remaining, CPU_POLL_S)):
                        if remaining <= 0:
                            raise self.died("did not answer in time", results) from None
                        watch.check()
                    continue
                if not self.readable.select(remaining):
                    raise self.died("did not answer in time", results) from None
                continue
            if not chunk:
                self.proc.wait()
                raise self.died("exited mid-job", results)
            buf += chunk
        return bytes(buf)

    def receive(
        self, timeout: float, results: list[TestResult], watch: CpuWatch | None = None
    ) -> tuple[dict, bytes, bytes]:
        deadline = time.monotonic() + timeout
        head_len, out_len, err_len = struct.unpack(">III", self._read_exact(12, deadline, results, watch))
        body = self._read_exact(head_len + out_len + err_len, deadline, results)
        try:
            header = json.loads(body[:head_len])
        except ValueError:
            raise self.died("sent a malformed report", results) from None
        if not isinstance(header, dict):
            raise self.died("sent a malformed report", results)
        return header, body[head_len : head_len + out_len], body[head_len + out_len :]

    def close_pipes(self) -> None:
        """End the job: the runner reads EOF, kills what is left in the jail and exits."""
        self.retired_at = time.monotonic()
        self.readable.close()
        self.writable.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError as exc:
                log.debug("closing a jail pipe: %s", exc)

    def reap(self, force: bool = False) -> bool:
        """True once the jail is gone; kills it when it outstays REAP_GRACE_S (or at once with force)."""
        if self.proc.poll() is None:
            overdue = self.retired_at is not None and time.monotonic() - self.retired_at > REAP_GRACE_S
            if not (force or overdue):
                return False
            # Killing nsjail tears down the jail's pid namespace, and every process in it.
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return True


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


class CpuWatch:
    """Kills a test's whole process tree once its cgroup's CPU time reaches the limit (polled by receive)."""

    def __init__(self, group: TestGroup, limit_s: float):
        self.group = group
        self.limit_s = limit_s
        self.active = True

    def check(self) -> None:
        if self.group.cpu_s() >= self.limit_s:
            self.group.killed_for_cpu = True
            self.group.kill()
            self.active = False  # the runner now sees its child die and reports
