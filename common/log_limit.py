"""Rate-limited warnings for whatever a peer can make a process log: bad messages, rejected requests.

A receiver logs the first few bad messages it drops so that an operator sees what is wrong, and counts every
one in a metric. What a peer sends must never decide how much is logged: "once per sender and cause" still
logs a line per frame when the causes differ (an unknown field name, a length), and a peer reconnecting gets
a new identity each time. :class:`LogLimiter` bounds the lines by time instead: at most ``burst`` lines per
``window_s``; the lines held back are counted and reported in one summary line when the next window opens
with a new warning. Peer-supplied text is escaped (newlines, terminal escapes, non-ASCII) and clipped, so a
crafted field name cannot forge log lines.

:class:`LogOnce` is the shape of every "drop it and go on" path: a long-running role counts every drop in its
own metric and logs the first drop of each kind (sender, cause), remembering at most ``max_keys`` kinds (keys
a peer controls cannot grow memory), through a :class:`LogLimiter` (lines per minute bounded, text escaped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

MAX_ARG_CHARS = 400


def printable(value: object, limit: int = MAX_ARG_CHARS) -> str:
    """``value`` as one line of printable ASCII (backslash escapes), at most ``limit`` characters + '...'."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value[: limit + 1]))
    else:
        text = str(value)[: limit * 4]  # escaping at most quadruples a character
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


class LogLimiter:
    """``warning(msg, *args)`` logs through ``logger`` while this window's budget lasts (thread-safe)."""

    def __init__(self, logger: logging.Logger, name: str, *, burst: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.name = name
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._lines = 0
        self.suppressed = 0  # held back in the current window
        self.suppressed_total = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` (every arg escaped by :func:`printable`) unless over budget; True when logged."""
        return self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, msg, *args)

    def log(self, level: int, msg: str, *args: object) -> bool:
        summary = 0
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self.window_s:
                summary, self.suppressed = self.suppressed, 0
                self._window_start, self._lines = now, 0
            allowed = self._lines < self.burst
            if allowed:
                self._lines += 1
            else:
                self.suppressed += 1
                self.suppressed_total += 1
        if summary:
            self.logger.warning("%s: %d similar warnings were not logged in the last %.0f s (only counted)",
                                self.name, summary, self.window_s)
        if allowed:
            self.logger.log(level, msg, *(printable(a) if isinstance(a, (str, bytes, bytearray)) else a for a in args))
        return allowed


class LogOnce:
    """``warning(key, msg, *args)`` logs ``msg % args`` the first time ``key`` is seen (within the log budget)."""

    def __init__(self, logger: logging.Logger, name: str, *, max_keys: int = 10_000, burst: int = 10,
                 window_s: float = 60.0):
        self.seen: set[Hashable] = set()
        self.max_keys = max_keys
        self.limiter = LogLimiter(logger, name, burst=burst, window_s=window_s)

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        """True when this call logged (the key's first occurrence, and the budget allowed it)."""
        if key in self.seen or len(self.seen) >= self.max_keys:
            return False
        self.seen.add(key)
        return self.limiter.warning(msg, *args)
