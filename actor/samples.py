"""Sampled episodes: a rollout sink wrapper that also writes a bounded sample of readable episodes to the run dir.

``EpisodeRunner`` hands every finished episode to ``sink.send``; :class:`SamplingSink` forwards it to the real
sink first (the learner never waits on the sample), then writes a seeded ``monitoring.episode_samples.rate``
fraction of them with :class:`~rlef.monitoring.episode_samples.SampleWriter` (format and disk bound there).
Sampling is observability, never a reason to stop: any failure to build or write a sample is counted
(``rlef_actor_episode_sample_errors_total``), logged once, and the actor goes on.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from rlef.actor.episode_records import EpisodeRecord
from rlef.actor.episodes import RolloutSink
from rlef.common.config import EpisodeSamplesConfig
from rlef.monitoring import metrics_actor as M
from rlef.monitoring.episode_samples import SCHEMA, SampleWriter, clip_text
from rlef.common.log_limit import LogOnce

log = logging.getLogger(__name__)


def episode_sample(record: EpisodeRecord, max_text_chars: int = 20_000) -> dict[str, Any]:
    """The readable sample of one episode (no token ids or log-probs: those stay in the learner's spool)."""
    r = record.rollout

    def clip(text: str | None) -> str | None:
        return clip_text(text, max_text_chars)

    return {
        "schema": SCHEMA,
        "time": time.time(),
        "rollout_id": r.rollout_id,
        "actor_id": r.actor_id,
        "problem_id": r.problem_id,
        "random_feedback": r.random_feedback,
        "rewards": list(r.rewards),
        "final": {"passed": r.final.passed, "status": r.final.status, "tests_passed": r.final.tests_passed,
                  "tests_total": r.final.tests_total},
        "timings": dict(r.timings),
        "turns": [
            {
                "turn": k,
                "policy_version": t.generation.policy_version,
                "finish_reason": t.generation.finish_reason,
                "prompt_text": clip(t.prompt_text),
                "response_text": clip(t.response_text),
                "code": clip(t.code),
                "status": t.outcome.status,
                "public_passed": t.outcome.public_passed,
                "public_total": t.outcome.public_total,
                "feedback": clip(t.feedback),
                "prompt_tokens": len(t.prompt_ids),
                "response_tokens": len(t.generation.token_ids),
            }
            for k, t in enumerate(record.turns, start=1)
        ],
    }


class SamplingSink:
    """Forward to ``inner``, then write a sample of the episodes under ``run_dir/samples/<actor_id>/``."""

    def __init__(self, inner: RolloutSink, run_dir: Path, actor_id: str, config: EpisodeSamplesConfig, seed: int = 0):
        self.inner = inner
        self.config = config
        self._rng = random.Random(seed)
        self._log = LogOnce(log, "episode samples")
        self.writer: SampleWriter | None = None
        if config.enabled and config.rate > 0:
            try:
                self.writer = SampleWriter(run_dir / "samples" / actor_id, max_bytes=config.max_bytes, file_bytes=config.file_bytes)
            except OSError as exc:
                self._failed(exc)

    @property
    def sent(self) -> int:
        return getattr(self.inner, "sent", 0)

    async def send(self, record: EpisodeRecord) -> None:
        await self.inner.send(record)
        if self.writer is not None and self._rng.random() < self.config.rate:
            self.write(record)

    def write(self, record: EpisodeRecord) -> None:
        """Write one sample now; never raises (see the module docstring)."""
        if self.writer is None:
            return
        try:
            self.writer.write(episode_sample(record, self.config.max_text_chars))
            M.EPISODE_SAMPLES.inc()
        except Exception as exc:  # noqa: BLE001 - a disk or encoding problem must not end episodes
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        M.EPISODE_SAMPLE_ERRORS.inc()
        self._log.warning("failed", "episode sample not written (%s: %s); the actor goes on, further failures are "
                          "only counted in rlef_actor_episode_sample_errors_total", type(exc).__name__, exc)

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            self._failed(exc)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
