"""Learner ranks die with their launcher: a rank whose torchrun agent is gone stops at once.

torchrun starts each rank as its child. When the agent is killed with SIGKILL it cannot stop the ranks, and
before this module they kept training and publishing weights with no parent (issue 11): rank 0 still held
the hub's ports, so the restarted learner failed with "Address already in use". A thread per rank polls its
parent pid; once the rank has been re-parented (to init or to the launcher, which is a child subreaper) it
SIGKILLs itself, which releases every socket at once.

A parent-watch thread rather than PR_SET_PDEATHSIG: the death signal fires when the *thread* that forked the
rank exits, and torchrun's agent may start ranks from a thread it does not keep; the watch depends only on
the process tree. It is armed only under torchrun (``TORCHELASTIC_RUN_ID`` set): a single-rank ``rlef
learner`` started from a shell must survive that shell.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

POLL_S = 0.5


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_parent(poll_s: float = POLL_S, *, force: bool = False) -> threading.Thread | None:
    """Start the watch (a daemon thread) when under torchrun or ``force``; returns it, or None when not armed."""
    if not (force or under_torchrun()):
        return None
    parent = os.getppid()
    if parent == 1:  # already orphaned between fork and here
        _die(parent)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != parent:
                _die(parent)

    thread = threading.Thread(target=watch, name="learner-lifeline", daemon=True)
    thread.start()
    return thread


def _die(parent: int) -> None:
    # Logged before dying so the learner's log says why the rank vanished.
    log.error("learner rank (pid %d): parent %d (torchrun) is gone; exiting with SIGKILL so no orphan trains",
              os.getpid(), parent)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
