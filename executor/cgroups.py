"""Per-test limits that forking cannot escape: one cgroup per test, created and read by the host.

Why cgroups: rlimits bind each process alone, so a test that forks 4 children gets 4x the CPU time and 4x
the memory, and the direct child's rusage misses its children. A cgroup holds every process a test starts:
its CPU time (cpuacct.usage / cpu.stat) is the whole tree's, its memory limit bounds the tree together, its
pids limit bounds the process count, and its own OOM counter says whether the kernel's OOM killer acted.

How a test gets its group: the warm runner forks the test's child ahead of time; the child waits on a pipe
before it runs any program code. The host finds the child's host pid (the runner's only child), creates
``<base>/t<N>``, writes the limits, moves the child in, and only then sends the test's input. Nothing the
program does can run outside the group: every process it starts is born inside it, and the jail has no
/sys and no privilege to move itself.

Finding a usable hierarchy and opening this executor's base group in it is :mod:`rlef.executor.cgroups_setup`
(:func:`~rlef.executor.cgroups_setup.open_cgroups`); this module holds the groups themselves: the base
(:class:`Cgroups`, per cgroup version) and one :class:`TestGroup` per test.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rlef.common.errors import SandboxError

log = logging.getLogger(__name__)

KILL_ROUNDS = 50
RMDIR_RETRIES = 20


class CgroupUnavailable(SandboxError):
    """No cgroup hierarchy this executor can use for per-test limits (the reason says what was tried)."""


class CgroupError(SandboxError):
    """A cgroup operation failed mid-job (our fault: the job is retried in a fresh jail)."""


@dataclass(frozen=True)
class TestUsage:
    """What a test's cgroup measured once the test was over."""

    cpu_s: float  # CPU time of every process of the test
    memory_peak_bytes: int | None  # peak memory of the test's processes together (None: kernel has no counter)
    oom_kills: int  # processes of the test the kernel's OOM killer killed
    pids_refused: int  # forks refused at the process limit
    killed_for_cpu: bool  # the host killed the test's processes at the CPU-time limit


def write_file(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read_file(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.oom_control, memory.events, cpu.stat, pids.events) as a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out

def rmdir_tree(path: Path) -> None:
    """Remove a cgroup directory and its (empty) child groups, deepest first."""
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        rmdir_tree(child)
    os.rmdir(path)


class TestGroup:
    """The cgroup of one test: add the test's process, watch its CPU time, read its usage, remove it."""

    def __init__(self, owner: "Cgroups", dirs: dict[str, Path]):
        self.owner = owner
        self.dirs = dirs  # controller -> directory (v2: the one directory under every key)
        self.killed_for_cpu = False

    def add(self, pid: int) -> None:
        for directory in dict.fromkeys(self.dirs.values()):
            try:
                write_file(directory / "cgroup.procs", str(pid))
            except OSError as exc:
                raise CgroupError(f"cannot move pid {pid} into {directory}: {exc}") from exc

    def cpu_s(self) -> float:
        return self.owner.cpu_s(self)

    def pids(self) -> list[int]:
        directory = self.dirs["pids"]
        try:
            return [int(p) for p in read_file(directory / "cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process of the test (repeated: a fork racing the signal is caught next round)."""
        kill_file = self.dirs["pids"] / "cgroup.kill"
        if self.owner.version == "v2" and kill_file.exists():
            try:
                write_file(kill_file, "1")
                return
            except OSError as exc:
                log.debug("cgroup.kill failed, killing one by one: %s", exc)
        for _ in range(KILL_ROUNDS):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            time.sleep(0.001)

    def usage(self) -> TestUsage:
        return self.owner.usage(self)

    def remove(self) -> bool:
        """Delete the group; False when the kernel still holds it (the caller retries later)."""
        removed = True
        for directory in dict.fromkeys(self.dirs.values()):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    log.warning("cannot remove cgroup %s: %s", directory, exc)
                removed = False
        return removed


class Cgroups:
    """A base group of this executor under which every test gets its own group. Thread-safe."""

    version: str = ""

    def __init__(self, bases: dict[str, Path]):
        self.bases = bases
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._leftover: list[TestGroup] = []
        atexit.register(self.close)

    @property
    def description(self) -> str:
        where = ", ".join(sorted({str(p) for p in self.bases.values()}))
        return f"cgroup {self.version} ({where})"

    def create(self, memory_bytes: int, max_processes: int) -> TestGroup:
        with self._lock:
            name = f"t{next(self._names)}"
            self._retry_leftovers()
        dirs = {controller: base / name for controller, base in self.bases.items()}
        created: list[Path] = []
        try:
            for directory in dict.fromkeys(dirs.values()):
                os.mkdir(directory)
                created.append(directory)
            group = TestGroup(self, dirs)
            self._limit(group, memory_bytes, max_processes)
        except OSError as exc:
            for directory in created:
                try:
                    os.rmdir(directory)
                except OSError as cleanup:
                    log.debug("removing %s after a failed create: %s", directory, cleanup)
            raise CgroupError(f"cannot create a test cgroup under {self.description}: {exc}") from exc
        return group

    def release(self, group: TestGroup) -> None:
        """Remove ``group`` now, or later if the kernel is still tearing its processes down."""
        if not group.remove():
            with self._lock:
                self._leftover.append(group)

    def _retry_leftovers(self) -> None:
        self._leftover = [g for g in self._leftover if not g.remove()]

    def close(self) -> None:
        """Remove every group this executor made (at exit; a kill -9 leaves them to the next start)."""
        for base in dict.fromkeys(self.bases.values()):
            for _ in range(RMDIR_RETRIES):
                try:
                    rmdir_tree(base)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        log.warning("cannot remove cgroup %s: %s", base, exc)
                        break
                    time.sleep(0.05)

    # Version specific parts.
    def _limit(self, group: TestGroup, memory_bytes: int, max_processes: int) -> None:
        raise NotImplementedError

    def cpu_s(self, group: TestGroup) -> float:
        raise NotImplementedError

    def usage(self, group: TestGroup) -> TestUsage:
        raise NotImplementedError


class CgroupsV1(Cgroups):
    version = "v1"

    def _limit(self, group: TestGroup, memory_bytes: int, max_processes: int) -> None:
        memory = group.dirs["memory"]
        write_file(memory / "memory.limit_in_bytes", str(memory_bytes))
        swap = memory / "memory.memsw.limit_in_bytes"
        if swap.exists():  # swap accounting on: memory + swap = memory, i.e. no swap for tests
            write_file(swap, str(memory_bytes))
        write_file(group.dirs["pids"] / "pids.max", str(max_processes))

    def cpu_s(self, group: TestGroup) -> float:
        try:
            return int(read_file(group.dirs["cpuacct"] / "cpuacct.usage")) / 1e9
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read CPU time of {group.dirs['cpuacct']}: {exc}") from exc

    def usage(self, group: TestGroup) -> TestUsage:
        memory = group.dirs["memory"]
        try:
            oom = _keyed(read_file(memory / "memory.oom_control"))
            peak = int(read_file(memory / "memory.max_usage_in_bytes"))
            refused = _keyed(read_file(group.dirs["pids"] / "pids.events")).get("max", 0)
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read usage of {memory}: {exc}") from exc
        return TestUsage(self.cpu_s(group), peak, oom.get("oom_kill", 0), refused, group.killed_for_cpu)


class CgroupsV2(Cgroups):
    version = "v2"

    def _limit(self, group: TestGroup, memory_bytes: int, max_processes: int) -> None:
        directory = group.dirs["memory"]
        write_file(directory / "memory.max", str(memory_bytes))
        if (directory / "memory.swap.max").exists():
            write_file(directory / "memory.swap.max", "0")
        write_file(directory / "pids.max", str(max_processes))

    def cpu_s(self, group: TestGroup) -> float:
        try:
            return _keyed(read_file(group.dirs["memory"] / "cpu.stat"))["usage_usec"] / 1e6
        except (OSError, KeyError) as exc:
            raise CgroupError(f"cannot read CPU time of {group.dirs['memory']}: {exc}") from exc

    def usage(self, group: TestGroup) -> TestUsage:
        directory = group.dirs["memory"]
        try:
            events = _keyed(read_file(directory / "memory.events"))
            peak_file = directory / "memory.peak"  # kernel 5.19+
            peak = int(read_file(peak_file)) if peak_file.exists() else None
            refused = _keyed(read_file(directory / "pids.events")).get("max", 0)
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read usage of {directory}: {exc}") from exc
        return TestUsage(self.cpu_s(group), peak, events.get("oom_kill", 0), refused, group.killed_for_cpu)
