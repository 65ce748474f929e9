"""Learner rank 0's endpoints: the rollout PULL socket and buffer, the control server, the weight publisher.

Only rank 0 builds a Hub; other ranks talk nothing but torch.distributed. ``collect`` blocks until B valid
rollouts are ready (or a stop is requested), counting everything it receives and rejects as it goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import zmq

from rlef.common.config import RlefConfig
from rlef.common.protocol.control_hub import make_control_server
from rlef.common.protocol.messages import Rollout
from rlef.common.protocol.transport import Transport
from rlef.common.weights import make_publisher
from rlef.learner.buffer import RolloutBuffer
from rlef.monitoring import metrics_learner as M
from rlef.monitoring.metrics import beat

log = logging.getLogger(__name__)

POLL_MS = 200


class Hub:
    def __init__(self, config: RlefConfig, *, vocab_size: int, version: int, spool_path: Path | None):
        self.config = config
        self.transport = Transport(config.transport)
        ep = config.endpoints
        self.rollouts = self.transport.server(zmq.PULL, ep.bind(ep.rollout_port))
        self.buffer = RolloutBuffer(vocab_size, config.model.max_seq_len, config.staleness.learner_max_lag, spool_path,
                                    on_reject=lambda reason: M.ROLLOUTS_REJECTED.labels(reason=reason).inc())
        self.buffer.version = version
        self.control = make_control_server(config, self.transport, version=version)
        self.publisher = make_publisher(config, self.transport)
        self._poller = zmq.Poller()
        self._poller.register(self.rollouts, zmq.POLLIN)

    def restore(self, consumed: list[str], version: int) -> None:
        readmitted = self.buffer.restore(consumed, version)
        log.info("hub restored %d consumed rollout ids at version %d; %d spooled rollouts re-admitted",
                 len(consumed), version, readmitted)

    def _drain(self, timeout_ms: int) -> None:
        if not self._poller.poll(timeout_ms):
            return
        while True:
            try:
                frame = self.rollouts.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            M.ROLLOUTS_RECEIVED.inc()
            self.buffer.offer(frame, sender="rollouts")

    def collect(self, n: int, should_stop: Callable[[], bool]) -> list[Rollout] | None:
        """``n`` valid rollouts (oldest first), or None when a stop was requested while waiting."""
        got = self.collect_frames(n, should_stop)
        return None if got is None else got[0]

    def collect_frames(self, n: int, should_stop: Callable[[], bool]) -> tuple[list[Rollout], list[bytes]] | None:
        """As ``collect``, with the frames the rollouts arrived in (the other ranks decode those: nothing is
        encoded again)."""
        out: list[tuple[Rollout, bytes]] = []
        start = time.monotonic()
        while True:
            if len(self.buffer) >= n - len(out):
                out += self.buffer.take_frames(n - len(out))
            M.BUFFER_FILL.set(len(self.buffer))
            if len(out) >= n:
                break
            if should_stop() or self.control.stop_requested:
                # Not trained on: they must stay unconsumed for a resume.
                self.buffer.give_back([r for r, _ in out], [f for _, f in out])
                return None
            beat(self.publisher.version)
            self._drain(POLL_MS)
        M.WAIT_SECONDS.inc(time.monotonic() - start)
        return [r for r, _ in out], [f for _, f in out]

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> None:
        self.publisher.publish(version, state)
        self.buffer.version = version
        self.control.set_version(version)
        beat(version)

    def close(self, stop_peers: bool) -> None:
        if stop_peers:
            self.control.request_stop()
            time.sleep(0.5)  # let the control thread deliver the stop before its socket closes
        self.control.close()
        self.publisher.close()
        if self.buffer.spool is not None:
            self.buffer.spool.close()
        self.rollouts.close(0)
        self.transport.close()
