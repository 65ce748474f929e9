"""Count every occurrence, log only the first of each kind: the shape of every "drop it and go on" path.

A long-running role that drops something (a malformed message, a rejected rollout, a sample it could not
write) counts every drop in its own metric and logs the first drop of each kind, so an operator sees what is
wrong and a flood of the same thing cannot flood the log. :class:`LogOnce` is that second half: it remembers
the kinds (keys) it has logged, at most ``max_keys`` of them (past that nothing new is logged: keys a peer
controls cannot grow memory), and logs through :class:`rlef.common.log_limit.LogLimiter`, which also bounds
the lines per minute and escapes peer-supplied text.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from rlef.common.log_limit import LogLimiter


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
