"""Counting and logging of dropped messages: every drop is counted, each (sender, cause) is logged once."""

from __future__ import annotations

import logging

from rlef.monitoring import metrics_executor as m

MAX_REMEMBERED = 10_000


class DropLog:
    """``drop(reason, sender)`` counts a malformed or unexpected message and logs its first occurrence."""

    def __init__(self, process: str, logger: logging.Logger):
        self.process = process
        self.log = logger
        self.seen: set[tuple[str, str]] = set()
        self.count = 0

    def drop(self, reason: str, sender: str, cause: str | None = None) -> None:
        self.count += 1
        m.BAD_MESSAGES.labels(self.process).inc()
        key = (sender, cause or reason[:80])
        if key in self.seen:
            return
        if len(self.seen) < MAX_REMEMBERED:
            self.seen.add(key)
        self.log.warning("dropped a message from %s: %s (further drops like it are only counted)", sender, reason)
