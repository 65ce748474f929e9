"""Where finished episodes go: the learner hub's rollout endpoint, or a JSONL file in dry runs.

Backpressure (:class:`PushSink`): the PUSH socket queues at most ``transport.sndhwm`` messages; beyond that
``send`` waits until the learner takes some, and the episode slot that holds the rollout starts no new
episode meanwhile. A slow learner therefore slows the actor down; memory stays bounded by
``sndhwm + episodes_in_flight`` rollouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import zmq
import zmq.asyncio

from rlef.actor.episode_records import EpisodeRecord
from rlef.common.protocol.messages import encode
from rlef.common.protocol.transport import Transport


class PushSink:
    """PUSH each rollout (msgpack :class:`~rlef.common.protocol.messages.Rollout`) to ``endpoint``."""

    def __init__(self, transport: Transport, endpoint: str):
        if not isinstance(transport.context, zmq.asyncio.Context):
            raise TypeError("PushSink needs an asyncio Transport (Transport(config, asyncio=True))")
        self.endpoint = endpoint
        self._sock = transport.client(zmq.PUSH, endpoint)
        self.sent = 0

    async def send(self, record: EpisodeRecord) -> None:
        await self._sock.send(encode(record.rollout))
        self.sent += 1

    def close(self) -> None:
        self._sock.close(0)


class JsonlSink:
    """Append each rollout as one readable JSON line (texts of every turn, ids, log-probs, rewards)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        self.sent = 0

    async def send(self, record: EpisodeRecord) -> None:
        self._file.write(json.dumps(record.to_json()) + "\n")
        self._file.flush()
        self.sent += 1

    def close(self) -> None:
        self._file.close()


class ListSink:
    """Keep records in memory (tests and benchmarks)."""

    def __init__(self) -> None:
        self.records: list[EpisodeRecord] = []

    async def send(self, record: EpisodeRecord) -> None:
        self.records.append(record)
