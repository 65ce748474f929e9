"""Stopping test processes that each lead their own session (started with start_new_session=True)."""

from __future__ import annotations

import contextlib
import os
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
