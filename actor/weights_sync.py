"""Keeps the engine's weights current and holds back new episodes while the actor lags the hub too far.

A background task polls the weight receiver (``rlef.common.weights``: it hands out only whole, checksummed
versions) and applies each to the backend (``load_weights``: between generation steps, in-flight episodes
continue). A version that does not fit the model is rejected (counted, logged, not applied) and the actor
keeps generating with what it holds. The hub's current version comes from the control channel; when it is
ahead of the engine by more than ``max_policy_lag`` (``staleness.actor_max_lag``: max(k - 1, 0) of the one
setting ``staleness.max_async_level``, see rlef.common.config.StalenessConfig), :meth:`WeightSync.wait_fresh`
blocks new episodes until the next version has been applied (0 makes the actor synchronous). Until the hub has answered once, its version is unknown
and no episode starts either (a late joiner first catches up).

Re-basing after a hub restart (issue 11): a learner resumed from a checkpoint older than the actor's weights
announces lower version numbers, and versions only ever increase on a receiver, so before this the actor
never applied the new hub's versions and the hub rejected its rollouts as ``future_version``: training
stalled. The control client now reports a restart (the hub's incarnation nonce changed); :meth:`hub_restarted`
then replaces the receiver with a fresh one (made by ``receiver_factory``; it asks for the hub's current
version from scratch), holds new episodes, and applies the first version it delivers whatever its number.
Episodes that began before that version was applied carry turns of the old lineage and are dropped by
:class:`LineageSink` (counted as ``rlef_actor_episodes_dropped_total{reason="rebased"}``), so a version number
never names two different weights in what the hub trains on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
        receiver_factory: Callable[[], Any] | None = None,
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
        self._receiver_factory = receiver_factory
        self._restart = threading.Event()  # set from the control thread by hub_restarted
        self.rebasing = False
        """A hub restart was seen and its weights are not applied yet (new episodes wait)."""
        self.rebased_at: float | None = None
        """time.time() when the last re-base was applied (episodes that began earlier are of the old lineage)."""
        self.rebases = 0

    def notify(self, hub_version: int) -> None:
        """Control-channel version hint, for whichever receiver is current."""
        self.receiver.notify(hub_version)

    def hub_restarted(self, hub_version: int) -> None:
        """The hub restarted (thread-safe; called by the control client): re-base onto its weights."""
        if self._receiver_factory is None:
            log.warning("hub restarted at version %d but no receiver factory: cannot re-base", hub_version)
            return
        self.rebasing = True
        self._restart.set()

    def hub_version(self) -> int:
        return self._hub_version() if self._hub_version is not None else self.backend.version

    def lag(self) -> int:
        return max(0, self.hub_version() - self.backend.version)

    def fresh(self) -> bool:
        """The hub's version is known (``hub_known``, e.g. registration answered) and the lag is within bounds."""
        known = self._hub_known() if self._hub_known is not None else True
        return known and not self.rebasing and self.lag() <= self.max_policy_lag

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
            if self._restart.is_set():
                self._restart.clear()
                await self._replace_receiver()
            received = await asyncio.to_thread(self.receiver.poll, self.poll_timeout_s)
            if received is not None:
                await self.apply(received)
            M.POLICY_VERSION_LAG.set(self.lag())
            base_metrics.beat(self.backend.version)

    async def _replace_receiver(self) -> None:
        """A fresh receiver: the old one holds the old lineage's newest version and would ignore lower ones."""
        old = self.receiver
        self.receiver = await asyncio.to_thread(self._receiver_factory)
        await asyncio.to_thread(old.close)
        log.info("hub restarted: new weights receiver; holding new episodes until its current version is applied "
                 "(ours: %d)", self.backend.version)

    async def apply(self, received: Any) -> bool:
        """Apply one received version; False (counted, logged, nothing changed) when it does not fit.

        While re-basing the version is applied whatever its number (module docstring); otherwise only newer ones."""
        rebase = self.rebasing and not self._restart.is_set()  # a delivery of the NEW receiver
        if received.version <= self.backend.version and not rebase:
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
        if rebase:
            self.rebased_at = time.time()
            self.rebasing = False
            self.rebases += 1
            M.WEIGHTS_REBASES.inc()
            log.warning("re-based onto the restarted hub's version %d", received.version)
        if self._on_applied is not None:
            self._on_applied(received.version)
        return True


class LineageSink:
    """Drops (and counts) episodes that began before the last re-base: their turns were generated with the
    old hub's lineage, whose version numbers the restarted hub re-uses for other weights."""

    def __init__(self, inner: Any, gate: WeightSync):
        self.inner = inner
        self.gate = gate
        self.dropped = 0

    async def send(self, record: Any) -> None:
        timings = record.rollout.timings
        began = timings.get("finished_unix", time.time()) - timings.get("total_s", 0.0)
        if self.gate.rebasing or (self.gate.rebased_at is not None and began < self.gate.rebased_at):
            self.dropped += 1
            M.EPISODES_DROPPED.labels("rebased").inc()
            log.info("rollout %s began before the re-base onto the restarted hub: dropped", record.rollout.rollout_id)
            return
        await self.inner.send(record)

    def close(self) -> None:
        self.inner.close()
