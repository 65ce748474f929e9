"""Learner ranks die with their launcher (issue 11 item 5): a real torchrun, SIGKILLed, leaves no rank alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.processes import is_alive

from rlef.learner.lifeline import watch_parent

pytestmark = pytest.mark.slow


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ranks_die_when_torchrun_is_killed(tmp_path: Path) -> None:
    rank = tmp_path / "rank.py"
    rank.write_text(textwrap.dedent(f"""
        import os, time
        from rlef.learner.lifeline import watch_parent
        assert watch_parent() is not None  # armed: torchrun sets TORCHELASTIC_RUN_ID
        open(os.path.join({str(tmp_path)!r}, os.environ["RANK"] + ".pid"), "w").write(str(os.getpid()))
        time.sleep(600)
        """))
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                              "--nproc-per-node", "2", str(rank)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: all((tmp_path / f"{r}.pid").exists() and (tmp_path / f"{r}.pid").read_text() for r in "01"),
              120, "both ranks to start")
        pids = [int((tmp_path / f"{r}.pid").read_text()) for r in "01"]
        assert all(is_alive(pid) for pid in pids)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        # The ranks are in their own sessions: only their own watch can stop them.
        _wait(lambda: not any(is_alive(pid) for pid in pids), 30, "the orphaned ranks to die")
    finally:
        with_pids = [tmp_path / f"{r}.pid" for r in "01"]
        for path in with_pids:
            if path.exists() and path.read_text():
                try:
                    os.kill(int(path.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone: what the test wants
        if agent.poll() is None:
            agent.kill()


def test_not_armed_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """A single-rank `rlef learner` from a shell must survive that shell."""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert watch_parent() is None
