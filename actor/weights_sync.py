"""Keeps the engine's weights current and holds back new episodes while the actor lags the hub too far.

A background task polls the weight receiver (``rlef.common.weights``: it hands out only whole, checksummed
versions) and applies each to the backend (``load_weights``: between generation steps, in-flight episodes
continue). A version that does not fit the model is rejected (counted, logged, not applied) and the actor
keeps generating with what it holds. The hub's current version comes from the control channel; when it is
ahead of the engine by more than ``actor.max_policy_lag``, :meth:`WeightSync.wait_fresh` blocks new episodes
until the next version has been applied (``max_policy_lag: 0`` makes the actor synchronous). Until the hub has answered once, its version is unknown
and no episode starts either (a late joiner first catches up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from rlef.actor.backends.base import GenerationBackend
from rlef.common.errors import WeightsError
from rlef.monitoring import metrics as base_metrics
from rlef.monitoring import metrics_actor as M

log = logging.getLogger(__name__)


class WeightSync:
    """Receiver -> backend, plus the policy-lag gate. ``hub_version`` is read from the control client
    (``None``: no hub, e.g. dry runs; then the actor never lags)."""

    def __init__(
        self,
        backend: GenerationBackend,
        receiver: Any,
        *,
        max_policy_lag: int,
        hub_version: Callable[[], int] | None = None,
        hub_known: Callable[[], bool] | None = None,
        on_applied: Callable[[int], None] | None = None,
        poll_timeout_s: float = 0.2,
    ):
        self.backend = backend
        self.receiver = receiver
        self.max_policy_lag = max_policy_lag
        self._hub_version = hub_version
        self._hub_known = hub_known
        self._on_applied = on_applied
        self.poll_timeout_s = poll_timeout_s
        self.applied: list[int] = []
        self.rejected: list[tuple[int, str]] = []

    def hub_version(self) -> int:
        return self._hub_version() if self._hub_version is not None else self.backend.version

    def lag(self) -> int:
        return max(0, self.hub_version() - self.backend.version)

    def fresh(self) -> bool:
        """The hub's version is known (``hub_known``, e.g. registration answered) and the lag is within bounds."""
        known = self._hub_known() if self._hub_known is not None else True
        return known and self.lag() <= self.max_policy_lag

    async def wait_fresh(self) -> None:
        """Return once the hub's version is known and the lag is within ``max_policy_lag``."""
        if self.fresh():
            return
        started = time.perf_counter()
        log.info("hub version %d, ours %d (max lag %d): holding new episodes until we catch up",
                 self.hub_version(), self.backend.version, self.max_policy_lag)
        while not self.fresh():
            await asyncio.sleep(0.05)
        M.LAG_BLOCKED_SECONDS.inc(time.perf_counter() - started)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and apply until ``stop`` is set."""
        while not stop.is_set():
            received = await asyncio.to_thread(self.receiver.poll, self.poll_timeout_s)
            if received is not None:
                await self.apply(received)
            M.POLICY_VERSION_LAG.set(self.lag())
            base_metrics.beat(self.backend.version)

    async def apply(self, received: Any) -> bool:
        """Apply one received version; False (counted, logged, nothing changed) when it does not fit."""
        if received.version <= self.backend.version:
            return False
        started = time.perf_counter()
        try:
            await self.backend.load_weights(received)
        except WeightsError as exc:
            M.WEIGHTS_REJECTED.inc()
            self.rejected.append((received.version, str(exc)))
            log.error("weights version %d rejected, keeping version %d: %s", received.version, self.backend.version, exc)
            return False
        M.WEIGHTS_APPLIED.inc()
        M.WEIGHTS_APPLY_SECONDS.observe(time.perf_counter() - started)
        self.applied.append(received.version)
        if self._on_applied is not None:
            self._on_applied(received.version)
        return True
