"""Stopping test processes that each lead their own session (started with start_new_session=True)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable


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
