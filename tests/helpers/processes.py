"""Test processes: the ports they bind, and stopping those that each lead their own session (start_new_session=True)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path


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
