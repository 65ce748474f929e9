"""The slot scheduler: K multi-turn RLEF episodes in flight on one asyncio loop.

``EpisodeRunner.run`` keeps ``actor.episodes_in_flight`` episode slots going; each slot takes the next
problem, plays one episode of it (:class:`~rlef.actor.episode.EpisodePlayer`, which says what an episode is)
and hands the finished :class:`~rlef.actor.episode_records.EpisodeRecord` to the sink. While one episode
waits on the executor, others generate; the backend batches the generation requests that wait at the same
time, so the engine keeps working while programs run. With a ``gate`` (the staleness gate) a slot starts an
episode only once the actor's weights are fresh enough.

The loop never stops for one episode: a problem that cannot be run is skipped and counted (``skipped``); an
episode whose execution kept failing on our side (:class:`~rlef.common.errors.InfrastructureError`) is
dropped and counted (``rlef_actor_episodes_dropped_total{reason}``, ``dropped``), never given a reward;
``rlef evaluate`` reports such problems as errored. Any other error of an episode is counted
(``rlef_actor_episode_errors_total``, ``errors``), logged, and the slot goes on with the next problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterator, Protocol, Sequence

from rlef.actor.backends.base import GenerationBackend
from rlef.actor.episode import EpisodePlayer, Executor
from rlef.actor.episode_records import EpisodeRecord
from rlef.common.config import RlefConfig
from rlef.common.errors import InfrastructureError
from rlef.common.data.problems import Problem
from rlef.monitoring import metrics_actor as M

log = logging.getLogger(__name__)


class RolloutSink(Protocol):
    async def send(self, record: "EpisodeRecord") -> None: ...


class Gate(Protocol):
    async def wait_fresh(self) -> None: ...


async def _fresh_or_stopped(gate: Gate, stop: asyncio.Event) -> bool:
    """Wait at the gate unless ``stop`` comes first (True: fresh). An actor the hub refused or stopped never
    becomes fresh, and must not hang there."""
    fresh = asyncio.ensure_future(gate.wait_fresh())
    stopped = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait({fresh, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return fresh in done


class EpisodeRunner:
    """Runs episodes of ``problems`` on ``backend`` with ``executor`` and hands each finished one to ``sink``."""

    def __init__(
        self,
        config: RlefConfig,
        *,
        backend: GenerationBackend,
        executor: Executor,
        tokenizer: Any,
        problems: Iterator[Problem],
        sink: RolloutSink,
        actor_id: str,
        instance: str,
        gate: Gate | None = None,
        feedback_problems: Sequence[Problem] = (),
        seed: int = 0,
        final_test_set: str = "public+private",
    ):
        self.config = config
        self.backend = backend
        self.problems = problems
        self.sink = sink
        self.actor_id = actor_id
        self.instance = instance
        self.gate = gate
        self.player = EpisodePlayer(
            config, backend=backend, executor=executor, tokenizer=tokenizer, actor_id=actor_id,
            feedback_problems=feedback_problems, seed=seed, final_test_set=final_test_set,
        )
        self._counter = 0
        self.started = 0
        self.finished = 0
        self.skipped = self.player.skipped
        """(problem id, reason) of problems skipped (no public tests, first prompt too long)."""
        self.errors: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        """(problem id, reason) of episodes dropped because an execution kept failing on our side."""
        self._t0 = time.perf_counter()
        self._busy0 = backend.busy_seconds()
        self._busy_reported = self._busy0

    # ------------------------------------------------------------------ the loop

    async def run(self, episodes: int | None = None, stop: asyncio.Event | None = None) -> None:
        """Keep ``actor.episodes_in_flight`` episodes going until ``episodes`` were started (None: forever)
        or ``stop`` is set; returns when every started episode has been handed to the sink."""
        stop = stop or asyncio.Event()
        self._t0 = time.perf_counter()
        self._busy0 = self.backend.busy_seconds()
        workers = [asyncio.create_task(self._worker(episodes, stop), name=f"episode-slot-{k}")
                   for k in range(self.config.actor.episodes_in_flight)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, limit: int | None, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if limit is not None and self.started >= limit:
                return
            self.started += 1
            if self.gate is not None and not await _fresh_or_stopped(self.gate, stop):
                self.started -= 1
                return
            problem = next(self.problems)
            rollout_id = self.next_rollout_id()
            M.EPISODES_IN_FLIGHT.inc()
            try:
                record = await self.player.run_episode(problem, rollout_id)
            except asyncio.CancelledError:
                raise
            except InfrastructureError as exc:
                M.EPISODES_DROPPED.labels(exc.reason).inc()
                self.dropped.append((problem.problem_id, exc.reason))
                log.warning("episode %s on problem %s dropped (not scored): %s", rollout_id, problem.problem_id, exc)
                await asyncio.sleep(0)
                continue
            except Exception as exc:  # noqa: BLE001 - the loop counts, logs and goes on (see module docstring)
                M.EPISODE_ERRORS.labels(type(exc).__name__).inc()
                self.errors.append(f"{problem.problem_id}: {type(exc).__name__}: {exc}")
                log.exception("episode %s on problem %s failed; continuing", rollout_id, problem.problem_id)
                await asyncio.sleep(0)
                continue
            finally:
                M.EPISODES_IN_FLIGHT.dec()
            if record is None:
                await asyncio.sleep(0)
                continue
            waited = time.perf_counter()
            await self.sink.send(record)
            M.ROLLOUT_SEND_WAIT.observe(time.perf_counter() - waited)
            M.ROLLOUTS_SENT.inc()
            self.finished += 1
            self._report_busy()

    def next_rollout_id(self) -> str:
        """``<actor id>-<instance nonce>-<counter>``: unique across restarts because the nonce is fresh per start."""
        self._counter += 1
        return f"{self.actor_id}-{self.instance}-{self._counter}"

    def busy_fraction(self) -> float:
        """Engine busy time over wall time since ``run`` started."""
        wall = time.perf_counter() - self._t0
        return (self.backend.busy_seconds() - self._busy0) / wall if wall > 0 else 0.0

    def _report_busy(self) -> None:
        busy = self.backend.busy_seconds()
        M.ENGINE_BUSY_SECONDS.inc(max(0.0, busy - self._busy_reported))
        self._busy_reported = busy
        M.ENGINE_BUSY_FRACTION.set(self.busy_fraction())
