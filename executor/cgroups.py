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

Layout: the base group is ``rlef-<executor pid>`` under the executor's own cgroup (per controller on v1), so
the jails stay inside whatever limits the executor itself runs under. Stale bases of dead executors are
removed at start.

Detection (:func:`open_cgroups`): v2 when the executor's own v2 group offers the memory and pids
controllers and a probe group can be made; v1 when the memory, pids and cpuacct hierarchies are mounted
and writable. ``executor.cgroup`` forces one; ``none`` or nothing usable raises :class:`CgroupUnavailable`,
which the caller turns into a refusal to start unless ``executor.allow_weak_limits`` is set.
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

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids")
BASE_PREFIX = "rlef-"
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


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
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


def own_cgroups(proc_file: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` its v2 path."""
    out: dict[str, str] = {}
    for line in _read(Path(proc_file)).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            out[controller] = path
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup directory and its (empty) child groups, deepest first."""
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _rmdir_tree(child)
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
                _write(directory / "cgroup.procs", str(pid))
            except OSError as exc:
                raise CgroupError(f"cannot move pid {pid} into {directory}: {exc}") from exc

    def cpu_s(self) -> float:
        return self.owner.cpu_s(self)

    def pids(self) -> list[int]:
        directory = self.dirs["pids"]
        try:
            return [int(p) for p in _read(directory / "cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process of the test (repeated: a fork racing the signal is caught next round)."""
        kill_file = self.dirs["pids"] / "cgroup.kill"
        if self.owner.version == "v2" and kill_file.exists():
            try:
                _write(kill_file, "1")
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
                    _rmdir_tree(base)
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
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        swap = memory / "memory.memsw.limit_in_bytes"
        if swap.exists():  # swap accounting on: memory + swap = memory, i.e. no swap for tests
            _write(swap, str(memory_bytes))
        _write(group.dirs["pids"] / "pids.max", str(max_processes))

    def cpu_s(self, group: TestGroup) -> float:
        try:
            return int(_read(group.dirs["cpuacct"] / "cpuacct.usage")) / 1e9
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read CPU time of {group.dirs['cpuacct']}: {exc}") from exc

    def usage(self, group: TestGroup) -> TestUsage:
        memory = group.dirs["memory"]
        try:
            oom = _keyed(_read(memory / "memory.oom_control"))
            peak = int(_read(memory / "memory.max_usage_in_bytes"))
            refused = _keyed(_read(group.dirs["pids"] / "pids.events")).get("max", 0)
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read usage of {memory}: {exc}") from exc
        return TestUsage(self.cpu_s(group), peak, oom.get("oom_kill", 0), refused, group.killed_for_cpu)


class CgroupsV2(Cgroups):
    version = "v2"

    def _limit(self, group: TestGroup, memory_bytes: int, max_processes: int) -> None:
        directory = group.dirs["memory"]
        _write(directory / "memory.max", str(memory_bytes))
        if (directory / "memory.swap.max").exists():
            _write(directory / "memory.swap.max", "0")
        _write(directory / "pids.max", str(max_processes))

    def cpu_s(self, group: TestGroup) -> float:
        try:
            return _keyed(_read(group.dirs["memory"] / "cpu.stat"))["usage_usec"] / 1e6
        except (OSError, KeyError) as exc:
            raise CgroupError(f"cannot read CPU time of {group.dirs['memory']}: {exc}") from exc

    def usage(self, group: TestGroup) -> TestUsage:
        directory = group.dirs["memory"]
        try:
            events = _keyed(_read(directory / "memory.events"))
            peak_file = directory / "memory.peak"  # kernel 5.19+
            peak = int(_read(peak_file)) if peak_file.exists() else None
            refused = _keyed(_read(directory / "pids.events")).get("max", 0)
        except (OSError, ValueError) as exc:
            raise CgroupError(f"cannot read usage of {directory}: {exc}") from exc
        return TestUsage(self.cpu_s(group), peak, events.get("oom_kill", 0), refused, group.killed_for_cpu)


def _remove_stale(parent: Path) -> None:
    """Base groups left by executors that died without cleaning up (kill -9)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        suffix = entry.name[len(BASE_PREFIX):]
        if not entry.name.startswith(BASE_PREFIX) or not suffix.isdigit() or _pid_alive(int(suffix)):
            continue
        try:
            _rmdir_tree(entry)
            log.info("removed stale cgroup %s", entry)
        except OSError as exc:
            log.debug("stale cgroup %s not removable yet: %s", entry, exc)


def _probe(cgroups: Cgroups) -> None:
    """Make a test group, check its limits were accepted and it counts CPU, remove it."""
    group = cgroups.create(64 << 20, 8)
    try:
        group.cpu_s()
        group.usage()
    finally:
        cgroups.release(group)


def _open_v1(root: Path, own: dict[str, str]) -> Cgroups:
    bases: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        mount = root / controller
        if not (mount / "cgroup.procs").exists() or (mount / "cgroup.controllers").exists():
            raise CgroupUnavailable(f"no v1 {controller} hierarchy at {mount}")
        parent = mount / own.get(controller, "/").lstrip("/")
        if not (parent / "cgroup.procs").exists():
            raise CgroupUnavailable(f"{parent} (this process's {controller} cgroup) is not there")
        # Whether it really is the controller's hierarchy shows in the probe: a test group must take its limits.
        bases[controller] = parent / f"{BASE_PREFIX}{os.getpid()}"
    return _make(CgroupsV1, bases)


def _open_v2(root: Path, own: dict[str, str]) -> Cgroups:
    mounts = [m for m in (root, root / "unified") if (m / "cgroup.controllers").exists()]
    if not mounts:
        raise CgroupUnavailable(f"no cgroup2 hierarchy at {root} or {root / 'unified'}")
    mount = mounts[0]
    parent = mount / own.get("", "/").lstrip("/")
    available = _read(parent / "cgroup.controllers").split()
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(f"cgroup v2 group {parent} offers no {', '.join(missing)} controller(s) (has: {' '.join(available) or 'none'})")
    base = parent / f"{BASE_PREFIX}{os.getpid()}"
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        _write(parent / "cgroup.subtree_control", enable)
    except OSError as exc:
        # v2 lets a group with processes of its own have no controlled children: we are in it, so we move
        # into a leaf of our own first (as a systemd-delegated service does), then enable the controllers.
        if exc.errno != errno.EBUSY:
            raise CgroupUnavailable(f"cannot enable {enable} in {parent}: {exc}") from exc
        leaf = parent / f"{BASE_PREFIX}{os.getpid()}-executor"
        try:
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(parent / "cgroup.subtree_control", enable)
        except OSError as again:
            raise CgroupUnavailable(
                f"cannot enable {enable} in {parent} ({again}): other processes share it; run the executor in a delegated cgroup"
            ) from again
    try:
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", enable)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot prepare {base}: {exc}") from exc
    return _make(CgroupsV2, {"memory": base, "pids": base, "cpu": base})


def _make(cls: type[Cgroups], bases: dict[str, Path]) -> Cgroups:
    for base in dict.fromkeys(bases.values()):
        _remove_stale(base.parent)
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create {base}: {exc}") from exc
    cgroups = cls(bases)
    try:
        _probe(cgroups)
    except SandboxError as exc:
        cgroups.close()
        raise CgroupUnavailable(f"{cgroups.description} failed its probe: {exc}") from exc
    return cgroups


_opened: dict[tuple[str, str], Cgroups] = {}
_open_lock = threading.Lock()


def open_cgroups(mode: str, root: str = "/sys/fs/cgroup") -> Cgroups:
    """This process's per-test cgroups (one base shared by every sandbox of the process).

    ``mode``: ``auto`` (v2, else v1), ``v1``, ``v2`` or ``none``. Raises CgroupUnavailable with every reason.
    """
    if mode == "none":
        raise CgroupUnavailable("executor.cgroup=none")
    key = (mode, root)
    with _open_lock:
        if key in _opened:
            return _opened[key]
        own = own_cgroups()
        reasons = []
        for version, opener in (("v2", _open_v2), ("v1", _open_v1)):
            if mode not in ("auto", version):
                continue
            try:
                cgroups = opener(Path(root), own)
            except CgroupUnavailable as exc:
                reasons.append(f"{version}: {exc}")
                continue
            except OSError as exc:
                reasons.append(f"{version}: {exc}")
                continue
            _opened[key] = cgroups
            return cgroups
        raise CgroupUnavailable("; ".join(reasons))
