"""Counting and logging of dropped messages: every drop is counted; the first of each (sender, cause) is
logged while the process' log budget lasts (rlef.common.log_limit: 10 lines a minute), so a peer sending
garbage with ever-changing causes or identities cannot flood the log (:class:`rlef.common.log_limit.LogOnce`)."""

from __future__ import annotations

import logging

from rlef.monitoring import metrics_executor as m
from rlef.common.log_limit import LogOnce

MAX_REMEMBERED = 10_000


class DropLog:
    """``drop(reason, sender)`` counts a malformed or unexpected message and logs its first occurrence."""

    def __init__(self, process: str, logger: logging.Logger, *, burst: int = 10, window_s: float = 60.0):
        self.process = process
        self.log = logger
        self.count = 0
        self.once = LogOnce(logger, f"{process}: dropped messages", max_keys=MAX_REMEMBERED, burst=burst, window_s=window_s)

    def drop(self, reason: str, sender: str, cause: str | None = None) -> None:
        self.count += 1
        m.BAD_MESSAGES.labels(self.process).inc()
        self.once.warning((sender, cause or reason[:80]),
                          "dropped a message from %s: %s (further drops like it are only counted)", sender, reason)
