"""Host side of the sandbox: one nsjail per job, driving the warm runner (executor/runner.py) inside it.

The jail's command line and containment are :mod:`rlef.executor.nsjail`; its pipes :mod:`rlef.executor.jail`;
what a test's report means :mod:`rlef.executor.verdicts`. Per-test limits (wall clock with sub-second
precision, CPU, address space = memory + slack, stdout cap, stderr tail) are applied by the runner to each
forked child; the limits that forking cannot escape (CPU time of every process of the test, their memory
together, their number) by the host, through one cgroup per test (executor/cgroups.py): the host moves the
test's waiting child into its group before sending the input, polls the group's CPU time while it waits
for the report, kills the group at the limit, and reads its CPU time, peak memory and OOM count into the
TestResult.

Failure policy: if nsjail is missing or fails its own setup, :class:`SandboxError` is raised; nothing ever
runs unsandboxed. A jail that dies or stops answering mid-job raises :class:`~rlef.executor.jail.JailDied`
carrying the results reported so far; the caller decides whether to retry.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from rlef.common.config import ExecutorConfig
from rlef.common.errors import SandboxError
from rlef.common.protocol.messages import Limits, TestCase, TestResult
from rlef.executor.cgroups import CgroupError, CgroupUnavailable, Cgroups, TestGroup
from rlef.executor.cgroups_setup import open_cgroups
from rlef.executor.jail import CpuWatch, Jail, JailDied
from rlef.executor.nsjail import JAIL_WALL_BACKSTOP_S, MB, locate_nsjail, nsjail_command, runner_dir
from rlef.executor.verdicts import classify

log = logging.getLogger(__name__)

# Seconds the host waits beyond a test's own limit before deciding the runner itself is stuck.
HOST_GRACE_S = 5.0
START_TIMEOUT_S = 30.0


@dataclass
class JobOutcome:
    compile_ok: bool
    compile_message: str = ""
    tests: list[TestResult] = field(default_factory=list)


_weak_warned = False


def per_test_cgroups(config: ExecutorConfig) -> Cgroups | None:
    """The cgroups per-test limits go through, or None when the user opted into weak limits.

    Refuses (SandboxError) when no cgroup is usable and ``executor.allow_weak_limits`` is false.
    """
    global _weak_warned
    try:
        return open_cgroups(config.cgroup, config.cgroup_root)
    except CgroupUnavailable as exc:
        if not config.allow_weak_limits:
            raise SandboxError(
                f"no cgroup for per-test limits ({exc}); refusing to start, since without one a program that forks "
                "escapes its CPU-time and memory limits. Set executor.allow_weak_limits=true to run with per-process "
                "rlimits only."
            ) from None
        if not _weak_warned:
            _weak_warned = True
            log.warning(
                "WEAK LIMITS: no cgroup for per-test limits (%s); executor.allow_weak_limits=true, so CPU time, memory "
                "and processes are bounded per process only: a forking program can exceed its test's limits", exc
            )
        return None


class Sandbox:
    """One sandbox slot: runs jobs one at a time, each in a fresh jail. Thread-compatible, not thread-safe."""

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.nsjail = locate_nsjail(config.nsjail)
        self.runner = runner_dir()
        if not os.access(config.python, os.X_OK):
            raise SandboxError(f"executor.python {config.python} is not an executable interpreter")
        self.cgroups = per_test_cgroups(config)
        self.limits_mode = self.cgroups.version if self.cgroups is not None else "weak"
        self.aborted = False
        self._proc: subprocess.Popen | None = None
        self._ready: Jail | None = None  # started ahead of the next job, waiting for its setup frame
        self._dying: list[Jail] = []  # finished jails, reaped lazily so teardown is off the job's path

    def abort(self) -> None:
        """Shut down: kill the running and the waiting jail (from any thread) and refuse further jobs."""
        self.aborted = True
        for proc in (self._proc, self._ready.proc if self._ready else None):
            if proc is not None and proc.poll() is None:
                proc.kill()

    def close(self) -> None:
        """Stop every jail this sandbox started (the waiting one included)."""
        self.abort()
        if self._ready is not None:
            self._retire(self._ready)
            self._ready = None
        self._reap(wait=True)

    def self_check(self) -> None:
        """Run a tiny program end to end; raise SandboxError with nsjail's own words if anything is off."""
        limits = Limits(time_s=5.0, memory_bytes=256 * MB)
        try:
            outcome = self.run("import sys\nprint(int(sys.stdin.read()) + 1)\n", [TestCase(input="41", output="42")], limits)
        except JailDied as exc:
            raise SandboxError(f"sandbox self-check failed: {exc}") from None
        test = outcome.tests[0] if outcome.tests else None
        if not outcome.compile_ok or test is None or test.status != "pass":
            raise SandboxError(f"sandbox self-check failed: compile_ok={outcome.compile_ok} result={test}")

    def run(
        self, code: str, tests: list[TestCase], limits: Limits, stop_on_first_failure: bool = False, gate_tests: int = 0
    ) -> JobOutcome:
        """Compile ``code`` and run it on ``tests`` in one fresh jail (the rest after ``gate_tests`` only if
        those all passed; see ExecutionJob.gate_tests)."""
        if self.aborted:
            raise SandboxError("sandbox is shutting down")
        self._reap()
        memory = limits.memory_bytes + self.config.address_space_slack_bytes
        jail = self._take(memory)
        self._proc = jail.proc
        try:
            return self._drive(jail, code, tests, limits, memory, stop_on_first_failure, gate_tests)
        finally:
            self._proc = None
            self._retire(jail)
            if not self.aborted:
                try:
                    self._ready = self._spawn(memory)
                except SandboxError as exc:
                    log.warning("could not start a jail ahead of the next job: %s", exc)

    def _spawn(self, memory: int) -> Jail:
        cmd = nsjail_command(
            self.nsjail, self.config.python, self.runner, memory, JAIL_WALL_BACKSTOP_S, self.config.max_processes
        )
        jail_log = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=jail_log)
        except OSError as exc:
            jail_log.close()
            raise SandboxError(f"cannot start nsjail {self.nsjail}: {exc}") from exc
        return Jail(proc, jail_log, memory)

    def _take(self, memory: int) -> Jail:
        """The jail started ahead if it fits this job and is still alive, else a fresh one."""
        ready, self._ready = self._ready, None
        if ready is not None:
            if ready.memory == memory and ready.proc.poll() is None:
                return ready
            self._retire(ready)
        return self._spawn(memory)

    def _retire(self, jail: Jail) -> None:
        jail.close_pipes()
        self._dying.append(jail)

    def _reap(self, wait: bool = False) -> None:
        still = []
        for jail in self._dying:
            if not jail.reap(force=wait):
                still.append(jail)
        self._dying = still

    def wall_s(self, limits: Limits) -> float:
        return limits.time_s * self.config.wall_time_factor

    def _drive(
        self, jail: Jail, code: str, tests: list[TestCase], limits: Limits, memory: int, stop: bool, gate: int = 0
    ) -> JobOutcome:
        setup = {
            "code": code,
            "time_s": limits.time_s,
            "wall_s": self.wall_s(limits),
            "memory_bytes": memory,
            "max_output_bytes": self.config.max_output_bytes,
            "stderr_tail_bytes": self.config.stderr_tail_bytes,
        }
        results: list[TestResult] = []
        jail.send(json.dumps(setup).encode(), START_TIMEOUT_S, results)
        header, _, _ = jail.receive(START_TIMEOUT_S, results)
        if not header.get("compile_ok"):
            return JobOutcome(compile_ok=False, compile_message=str(header.get("message", "")))
        for test in tests:
            wait = self.wall_s(limits) + HOST_GRACE_S
            group = self._group_for_next_test(jail, limits, results)
            try:
                jail.send(test.input.encode("utf-8", errors="surrogateescape"), wait, results)
                watch = CpuWatch(group, limits.time_s) if group is not None else None
                header, out, err = jail.receive(wait, results, watch)
                usage = group.usage() if group is not None else None
            except CgroupError as exc:
                raise JailDied(str(exc), results) from None
            finally:
                if group is not None:
                    assert self.cgroups is not None
                    self.cgroups.release(group)
            result = classify(header, out, err, test.output, limits, usage)
            results.append(result)
            if stop and result.status != "pass":
                break
            if len(results) == gate and any(r.status != "pass" for r in results):
                break
        return JobOutcome(compile_ok=True, tests=results)

    def _group_for_next_test(self, jail: Jail, limits: Limits, results: list[TestResult]) -> TestGroup | None:
        """A fresh cgroup holding the child that will run the next test (forked, waiting, no code run yet)."""
        if self.cgroups is None:
            return None
        pids = jail.spare_pids()
        if not pids:
            return None  # the runner could not fork: it reports runner_error for this test
        try:
            group = self.cgroups.create(limits.memory_bytes, self.config.max_processes)
        except CgroupError as exc:
            raise JailDied(str(exc), results) from None
        try:
            for pid in pids:
                group.add(pid)
        except CgroupError as exc:
            self.cgroups.release(group)
            # The usual cause: the jail died between its report and now, taking the waiting child with it.
            try:
                jail.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                raise JailDied(str(exc), results) from None
            raise jail.died("exited mid-job", results) from None
        return group
