"""Finding a cgroup hierarchy for per-test limits and opening this executor's base group in it.

Layout: the base group is ``rlef-<executor pid>`` under the executor's own cgroup (per controller on v1), so
the jails stay inside whatever limits the executor itself runs under. Stale bases of dead executors are
removed at start.

Detection (:func:`open_cgroups`): v2 when the executor's own v2 group offers the memory and pids
controllers and a probe group can be made; v1 when the memory, pids and cpuacct hierarchies are mounted
and writable. ``executor.cgroup`` forces one; ``none`` or nothing usable raises
:class:`~rlef.executor.cgroups.CgroupUnavailable`, which the caller turns into a refusal to start unless
``executor.allow_weak_limits`` is set. The groups themselves are :mod:`rlef.executor.cgroups`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

from rlef.common.errors import SandboxError
from rlef.executor.cgroups import (
    CgroupUnavailable,
    Cgroups,
    CgroupsV1,
    CgroupsV2,
    read_file,
    rmdir_tree,
    write_file,
)

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids")
BASE_PREFIX = "rlef-"


def own_cgroups(proc_file: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` its v2 path."""
    out: dict[str, str] = {}
    for line in read_file(Path(proc_file)).splitlines():
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
            rmdir_tree(entry)
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
    available = read_file(parent / "cgroup.controllers").split()
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(f"cgroup v2 group {parent} offers no {', '.join(missing)} controller(s) (has: {' '.join(available) or 'none'})")
    base = parent / f"{BASE_PREFIX}{os.getpid()}"
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        write_file(parent / "cgroup.subtree_control", enable)
    except OSError as exc:
        # v2 lets a group with processes of its own have no controlled children: we are in it, so we move
        # into a leaf of our own first (as a systemd-delegated service does), then enable the controllers.
        if exc.errno != errno.EBUSY:
            raise CgroupUnavailable(f"cannot enable {enable} in {parent}: {exc}") from exc
        leaf = parent / f"{BASE_PREFIX}{os.getpid()}-executor"
        try:
            leaf.mkdir(exist_ok=True)
            write_file(leaf / "cgroup.procs", str(os.getpid()))
            write_file(parent / "cgroup.subtree_control", enable)
        except OSError as again:
            raise CgroupUnavailable(
                f"cannot enable {enable} in {parent} ({again}): other processes share it; run the executor in a delegated cgroup"
            ) from again
    try:
        base.mkdir(exist_ok=True)
        write_file(base / "cgroup.subtree_control", enable)
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
