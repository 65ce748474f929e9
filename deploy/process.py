"""One supervised child process: start it in its own session, watch it, restart it with backoff, stop it.

Scope: the process mechanics of the local launcher, independent of what the process is (the launcher's
specs say that). Invariants:

- every child runs in a new session (``start_new_session``), so its process group id equals its pid and a
  terminal's Ctrl-C reaches only the launcher, which then stops the children in order;
- a child's stdout and stderr go to its own log file, appended across restarts with a marker line;
- a child that exits 0 is done (an actor the hub told to stop) and stays down; one that fails is restarted
  (with ``restart_argv`` when the spec has one, e.g. the learner's ``--resume auto``), at most
  ``max_restarts`` times when that is set;
- before a failed child with ``kill_leftovers`` is restarted, every process of its last seen tree that
  survived it is SIGKILLed (torchrun's ranks live in their own sessions; after the agent's SIGKILL they would
  keep the hub's ports, and the new learner would fail with "Address already in use");
- restart delays grow exponentially (``backoff_base_s * 2**k``, capped at ``backoff_max_s``); ``k`` resets once
  a child has stayed up for ``stable_after_s``, so a crash loop slows down and a rare crash restarts fast;
- stopping sends SIGTERM to the child's process group, waits, then SIGKILLs the group; grandchildren that
  left the group (torchrun puts each worker in its own session) are found through /proc and stopped too
  (see :func:`descendants`), which is why the launcher also makes itself a child subreaper.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one role instance and how to treat its exit."""

    name: str  # unique, e.g. "actor-0"; also the log file's stem
    role: str  # learner | executor-broker | executor | actor (or anything in tests)
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    cwd: str | None = None
    restart: bool = True  # False: its exit ends the run
    index: int = 0
    restart_argv: tuple[str, ...] | None = None  # argv of restarts (None: argv)
    max_restarts: int | None = None  # restarts after failures before it stays down (None: unbounded)
    ends_run: bool = False  # its exit 0, or a failure once max_restarts are used, ends the run (the learner)
    kill_leftovers: bool = False  # SIGKILL what survives of its tree when it dies (see the module docstring)


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    BACKOFF = "backoff"  # died, waiting to be restarted
    EXITED = "exited"  # finished and will not be restarted
    STOPPED = "stopped"  # stopped by the launcher


@dataclass
class Backoff:
    base_s: float = 1.0
    max_s: float = 60.0
    stable_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1-based) of a crash streak."""
        return min(self.max_s, self.base_s * (2 ** max(0, failures - 1)))


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux), so none escapes the final sweep."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper (%s); relying on the /proc descendant sweep", exc)
        return False


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the last ')' (the command name may hold spaces and parentheses): state, ppid, ...
        rest = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(rest[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` in the process tree (from /proc; may race with exits: harmless)."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppid_map().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _start_time(pid: int) -> str | None:
    """A process' start time (field 22 of /proc/PID/stat), to tell it from a later process with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def signal_pids(pids: set[int], sig: int) -> None:
    """Send ``sig`` to each pid's process group and to the pid itself (either may already be gone)."""
    own_group = os.getpgrp()
    for pid in pids:
        try:
            group = os.getpgid(pid)
            if group != own_group:  # never signal the launcher's own group (its terminal, its caller)
                os.killpg(group, sig)
            os.kill(pid, sig)
        except ProcessLookupError:
            continue  # exited meanwhile: nothing left to stop


class ManagedProcess:
    """A :class:`ProcessSpec` plus its live state: the Popen, restarts, next start time."""

    def __init__(self, spec: ProcessSpec, log_dir: Path, backoff: Backoff) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.backoff = backoff
        self.state = State.PENDING
        self.popen: subprocess.Popen | None = None
        self.restarts = 0
        self.failures = 0  # consecutive quick deaths (resets after stable_after_s of uptime)
        self.started_at = 0.0
        self.next_start = 0.0
        self.returncode: int | None = None
        self._tree_seen: dict[int, str] = {}  # pid -> /proc start time, for kill_leftovers
        self.leftovers_killed = 0
        self.last_killed: set[int] = set()  # leftovers SIGKILLed at the last death (the supervisor skips them)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def argv(self) -> tuple[str, ...]:
        return self.spec.restart_argv if self.restarts > 0 and self.spec.restart_argv is not None else self.spec.argv

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== rlef launch: starting {self.spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}"
                      f" (restart {self.restarts}): {' '.join(argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.spec.env},
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        self.state = State.RUNNING
        self.started_at = time.monotonic()
        self.returncode = None
        log.info("started %s (pid %d)", self.spec.name, self.popen.pid)

    def poll(self, now: float) -> int | None:
        """Advance the state machine; returns the exit code when the process just died, else None."""
        if self.state is State.BACKOFF and now >= self.next_start:
            self.restarts += 1
            self.start()
            return None
        if self.state is not State.RUNNING or self.popen is None:
            return None
        code = self.popen.poll()
        if code is None:
            if self.spec.kill_leftovers:
                self._remember_tree()
            return None
        self.returncode = code
        if self.spec.kill_leftovers and code != 0:
            self._kill_leftovers()
        exhausted = self.spec.max_restarts is not None and self.restarts >= self.spec.max_restarts
        if code != 0 and self.spec.restart and exhausted:
            self.state = State.EXITED
            log.error("%s exited with %d after %d restart(s): not restarted again", self.spec.name, code, self.restarts)
            return code
        if not self.spec.restart or code == 0:
            # Exit 0 means done or told to stop (an actor after the hub's stop): nothing to restart.
            self.state = State.EXITED
            if code == 0:
                log.info("%s exited with 0: done, not restarted", self.spec.name)
            return code
        uptime = now - self.started_at
        self.failures = 1 if uptime >= self.backoff.stable_after_s else self.failures + 1
        delay = self.backoff.delay(self.failures)
        self.state = State.BACKOFF
        self.next_start = now + delay
        log.warning("%s exited with %d after %.1f s; restarting in %.2f s", self.spec.name, code, uptime, delay)
        return code

    def _remember_tree(self) -> None:
        for pid in descendants(self.popen.pid) if self.popen is not None else ():
            if pid not in self._tree_seen:
                start = _start_time(pid)
                if start is not None:
                    self._tree_seen[pid] = start

    def _kill_leftovers(self) -> None:
        """SIGKILL every process of the dead child's last seen tree still alive (same pid, same start time)."""
        alive = {pid for pid, start in self._tree_seen.items() if _start_time(pid) == start}
        self._tree_seen = {}
        self.last_killed = alive
        if alive:
            log.warning("%s died leaving %d process(es) running: SIGKILL %s", self.spec.name, len(alive), sorted(alive))
            self.leftovers_killed += len(alive)
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # exited meanwhile

    def tree(self) -> set[int]:
        """The child and every descendant still alive."""
        if self.popen is None or self.popen.poll() is not None:
            return set()
        return {self.popen.pid} | descendants(self.popen.pid)

    def terminate(self) -> None:
        """SIGTERM the child's group and its descendants; :meth:`kill` follows if it lingers."""
        if self.state in (State.BACKOFF, State.PENDING):
            self.state = State.STOPPED
        signal_pids(self.tree(), signal.SIGTERM)

    def kill(self) -> None:
        signal_pids(self.tree(), signal.SIGKILL)

    def reap(self) -> None:
        if self.popen is not None and self.popen.poll() is not None and self.state is State.RUNNING:
            self.returncode = self.popen.returncode
            self.state = State.STOPPED
