"""Test processes: the ports they bind, stopping those that each lead their own session (start_new_session=True),
and running a command such as `rlef launch` to its end while noting every process it started."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from rlef.deploy.process import descendants


def stop_process_groups(procs: Iterable[subprocess.Popen], timeout_s: float = 5.0) -> None:
    """SIGTERM every process group, wait ``timeout_s`` for each leader, SIGKILL the groups still there."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def is_alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it holds no resources and its parent, not us, must reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def stable_free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, below the kernel's ephemeral range, so that connections a process opens
    before it binds them (gloo, ZeroMQ) cannot take them first."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, min(low, 32768))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def run_watching_descendants(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int, str, set[int]]:
    """Run ``cmd`` in ``cwd`` (stdout and stderr merged, as text) until it exits, or ``timeout_s`` passed (then
    it is sent SIGTERM), noting every descendant it had, once a second. Returns its exit code, its output and
    the pids noted (a test asserts none of them is left alive)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= descendants(proc.pid)
        time.sleep(1)
    if proc.poll() is None:
        proc.terminate()
    out = proc.communicate(timeout=60)[0]
    return proc.returncode, out, seen
