"""Supervise a set of :class:`ManagedProcess` es until the run ends, then stop every one of them.

Scope: the launcher's main loop, independent of RLEF (tests drive it with small Python processes).
Invariants:

- a process with ``restart=True`` (actors, executors, the broker) that dies is restarted with backoff;
- the first ``restart=False`` process to exit ends the run with its exit code, and so does an ``ends_run``
  process (the learner) that exits 0 or has used up its ``max_restarts``; before that a dead learner is
  restarted like any other process (with ``--resume auto``: see :func:`rlef.deploy.specs.role_specs`);
- SIGINT/SIGTERM to the launcher ends the run with 128 + signal number;
- :meth:`Supervisor.stop` leaves no process behind: SIGTERM to every child's group and descendants, a grace
  period, SIGKILL for the rest, then a sweep of everything still below the launcher in the process tree
  (orphans re-parent to us because we are a child subreaper).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rlef.deploy.process import (
    Backoff, ManagedProcess, ProcessSpec, State, _ppid_map, descendants, set_child_subreaper, signal_pids,
)

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, specs: Sequence[ProcessSpec], log_dir: Path, backoff: Backoff | None = None, grace_s: float = 15.0) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self.processes = [ManagedProcess(s, log_dir, backoff or Backoff()) for s in specs]
        self.grace_s = grace_s
        self.stop_event = threading.Event()
        self.stop_signal: int | None = None
        self.ended_by: str | None = None  # name of the process whose exit ended the run

    # --- signals -------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            log.warning("received %s: stopping the run", signal.Signals(signum).name)
        self.stop_signal = signum
        self.stop_event.set()

    # --- main loop -----------------------------------------------------------------------------------------
    def start_all(self) -> None:
        set_child_subreaper()
        for proc in self.processes:
            proc.start()

    def step(self, now: float) -> int | None:
        """Poll every process once; returns the run's exit code when it has ended, else None."""
        for proc in self.processes:
            code = proc.poll(now)
            if code:  # died (not done): what it left re-parented to us is garbage, and may hold its ports
                self._kill_orphans(proc)
            if code is not None and (not proc.spec.restart or (proc.spec.ends_run and proc.state is State.EXITED)):
                self.ended_by = proc.spec.name
                log.info("%s exited with %d: the run ends", proc.spec.name, code)
                return code
        return None

    def run(self, on_tick: Callable[["Supervisor"], None] | None = None, tick_s: float = 0.25) -> int:
        """Start everything and supervise until the run ends; always stops every process before returning."""
        try:
            self.start_all()
            code: int | None = None
            while code is None:
                if self.stop_event.wait(tick_s):
                    code = 128 + (self.stop_signal or signal.SIGTERM)
                    break
                code = self.step(time.monotonic())
                self._reap_orphans()
                if on_tick is not None:
                    on_tick(self)
            return code
        finally:
            self.stop()
            if on_tick is not None:
                on_tick(self)

    # --- shutdown ------------------------------------------------------------------------------------------
    def alive(self) -> set[int]:
        pids: set[int] = set()
        for proc in self.processes:
            pids |= proc.tree()
        return pids | descendants(os.getpid())

    def stop(self) -> None:
        """SIGTERM all, wait up to ``grace_s``, SIGKILL what is left; returns when nothing is left."""
        for proc in self.processes:
            proc.terminate()
        signal_pids(descendants(os.getpid()), signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self._live_children():
            time.sleep(0.1)
            self._reap_orphans()
        stragglers = self.alive()
        if stragglers:
            log.warning("SIGKILL to %d process(es) still alive after %.0f s: %s", len(stragglers), self.grace_s, sorted(stragglers))
            for proc in self.processes:
                proc.kill()
            signal_pids(stragglers, signal.SIGKILL)
        for proc in self.processes:
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=10)
                except subprocess.TimeoutExpired as exc:  # uninterruptible sleep (D state): report, do not hang
                    log.error("%s (pid %d) did not exit after SIGKILL: %s", proc.spec.name, proc.popen.pid, exc)
            proc.reap()
        end = time.monotonic() + 5
        while self._live_children() and time.monotonic() < end:
            signal_pids(descendants(os.getpid()), signal.SIGKILL)
            self._reap_orphans()
            time.sleep(0.05)

    def _kill_orphans(self, dead: ManagedProcess) -> None:
        """SIGKILL every process re-parented to us (we are a subreaper) that no managed child owns, with its
        tree: after ``dead`` died they are what is left of it (torchrun's ranks once the agent got SIGKILL, an
        executor's jails, a forked helper of an actor still holding its metrics port: seen in the chaos test
        as "Address already in use" on the actor's restart), even those started too shortly before its death
        for a tree snapshot to have seen them."""
        me = os.getpid()
        managed = {p.popen.pid for p in self.processes if p.popen is not None and p.popen.poll() is None}
        orphans = {pid for pid, parent in _ppid_map().items()
                   if parent == me and pid not in managed and pid not in dead.last_killed and not _is_zombie(pid)}
        if not orphans:
            return
        doomed = set(orphans)
        for pid in orphans:
            doomed |= descendants(pid)
        doomed -= dead.last_killed
        log.warning("%s died; SIGKILL to %d orphaned process(es) it left: %s", dead.spec.name, len(doomed), sorted(doomed))
        dead.leftovers_killed += len(doomed)
        signal_pids(doomed, signal.SIGKILL)
        self._reap_orphans()

    def _live_children(self) -> bool:
        """Whether any managed process or any (non-zombie) descendant is still running."""
        if any(p.popen is not None and p.popen.poll() is None for p in self.processes):
            return True
        return any(not _is_zombie(pid) for pid in descendants(os.getpid()))

    def _reap_orphans(self) -> None:
        """Collect exited orphans that re-parented to us (never the managed children: Popen owns their status)."""
        managed = {p.popen.pid for p in self.processes if p.popen is not None}
        for pid in descendants(os.getpid()) - managed:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # a grandchild, not ours to reap: its own parent will


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat[stat.rfind(")") + 2] == "Z"


def summary(sup: Supervisor) -> dict[str, dict[str, object]]:
    """Per process: role, state, restarts, last exit code, survivors of its tree killed (run_dir/launch.json)."""
    return {
        p.spec.name: {"role": p.spec.role, "state": p.state.value, "restarts": p.restarts, "returncode": p.returncode,
                      "leftovers_killed": p.leftovers_killed}
        for p in sup.processes
    }


__all__ = ["Supervisor", "State", "summary"]
