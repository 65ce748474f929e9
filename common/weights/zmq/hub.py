"""The hub side of the zmq weights channel (learner rank 0): :class:`ZmqPublisher` packs each version once and
serves manifests and chunks to receivers, ordering the relaying ones into a chain (:mod:`rlef.common.weights.zmq`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import zmq

from rlef.common.errors import MessageError, WeightsError
from rlef.common.log_limit import LogOnce, printable
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, WeightsChunk, WeightsRequest, WeightsSource, encode
from rlef.common.protocol.router_loop import serve_router
from rlef.common.protocol.transport import Transport
from rlef.common.weights.base import WeightPublisher
from rlef.common.weights.packing import PackedVersion, pack
from rlef.common.weights.zmq.wire import NAME, POLL_MS, send_frames
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

_RECEIVER_WINDOW_S = 60.0


@dataclass
class _Member:
    """A relaying receiver in the hub's chain."""

    identity: bytes
    relay: str
    seen: float


class ZmqPublisher(WeightPublisher):
    """Hub side: packs each version once, serves manifests and chunks, and orders relaying receivers into a
    chain (see the module docstring) from a background thread."""

    transport_name = NAME

    def __init__(self, transport: Transport, endpoint: str, *, chunk_bytes: int, hub_id: str = "learner-0"):
        self.endpoint = endpoint
        self.chunk_bytes = chunk_bytes
        self.hub_id = hub_id
        self._sock = transport.server(zmq.ROUTER, endpoint, router_handover=1)
        # What receivers connect to (the real port when ``endpoint`` asked for port 0).
        self.bound_endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._current: tuple[PackedVersion, bytes, list[bytes]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receivers: dict[bytes, float] = {}
        self._chain: list[_Member] = []
        self._bad_log = LogOnce(log, "weights hub: bad messages", max_keys=1000)  # once per peer
        self.bad_messages = 0
        self.chunks_sent = 0
        self.sent_bytes = 0  # chunk bytes sent (the hub's egress), all versions
        self._thread = threading.Thread(target=self._serve, name="weights-hub", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        current = self._current
        return -1 if current is None else current[0].manifest.version

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        if version <= self.version:
            raise WeightsError(f"weights version {version} published after version {self.version}: versions must increase")
        start = time.perf_counter()
        packed = pack(version, state_dict, self.chunk_bytes)
        headers = [encode(WeightsChunk(version=version, index=i)) for i in range(packed.manifest.num_chunks)]
        with self._lock:
            self._current = (packed, encode(packed.manifest), headers)
        seconds = time.perf_counter() - start
        M.PUBLISH_SECONDS.labels(NAME).observe(seconds)
        M.PUBLISHED_BYTES.labels(NAME).inc(packed.manifest.total_bytes)
        M.PUBLISHED_VERSION.labels(NAME).set(version)
        log.info("weights hub: version %d packed (%d bytes, %d chunks) in %.2fs", version,
                 packed.manifest.total_bytes, packed.manifest.num_chunks, seconds)

    def receivers(self, within_s: float = _RECEIVER_WINDOW_S) -> int:
        """Distinct receivers that sent a request within the last ``within_s`` seconds."""
        now = time.monotonic()
        return sum(1 for seen in list(self._receivers.values()) if now - seen <= within_s)

    def chain(self) -> list[str]:
        """Relay endpoints in chain order (the first fetches from the hub)."""
        return [m.relay for m in list(self._chain)]

    # ------------------------------------------------------------------ serving thread

    def _serve(self) -> None:
        serve_router(self._sock, self._stop, self._handle, self._bad, self._forget_receivers, poll_ms=POLL_MS)

    def _forget_receivers(self, now: float) -> None:
        for identity in [i for i, seen in self._receivers.items() if now - seen > _RECEIVER_WINDOW_S]:
            del self._receivers[identity]  # restarted receivers come back under a new identity
        self._chain = [m for m in self._chain if now - m.seen <= _RECEIVER_WINDOW_S]
        M.RECEIVERS.labels(NAME).set(self.receivers())

    def _bad(self, identity: bytes, reason: str) -> None:
        self.bad_messages += 1
        M.HUB_BAD_MESSAGES.labels(NAME).inc()
        self._bad_log.warning(identity, "weights hub: dropped a bad message from %s: %s", identity[:64], reason)

    def _send(self, identity: bytes, *frames: bytes | memoryview) -> bool:
        return send_frames(self._sock, identity, list(frames), "weights hub")

    def _source_for(self, identity: bytes, request: WeightsRequest) -> str:
        """Chain bookkeeping for a ``get``: drop a reported dead peer, place a relaying receiver, and name
        the endpoint it should fetch from ("" = the hub)."""
        if request.dead:
            before = len(self._chain)
            self._chain = [m for m in self._chain if m.relay != request.dead]
            if len(self._chain) < before:
                log.info("weights hub: relay %s reported dead by %s; dropped from the chain", request.dead,
                         printable(request.receiver_id))
        if not request.relay:
            return ""
        now = time.monotonic()
        for position, member in enumerate(self._chain):
            if member.identity == identity or member.relay == request.relay:
                member.identity, member.seen = identity, now
                return "" if position == 0 else self._chain[position - 1].relay
        self._chain.append(_Member(identity, request.relay, now))
        return "" if len(self._chain) == 1 else self._chain[-2].relay

    def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            request = decode(frame, WeightsRequest, sender=identity[:64].decode(errors="replace"), max_frame=4096)
        except MessageError as exc:
            self._bad(identity, str(exc))
            return
        self._receivers[identity] = time.monotonic()
        current = self._current
        if request.op == "get":
            source = self._source_for(identity, request)
            if current is None:
                self._send(identity, encode(Control(op="ack", sender_id=self.hub_id, role="learner", version=-1)))
            elif current[0].manifest.version > request.version:
                version = current[0].manifest.version
                self._send(identity, encode(WeightsSource(version=version, endpoint=source)))
                self._send(identity, current[1])
            else:
                self._send(identity, encode(Control(op="ack", sender_id=self.hub_id, role="learner",
                                                    version=current[0].manifest.version)))
            return
        if current is None:
            self._send(identity, encode(Control(op="ack", sender_id=self.hub_id, role="learner", version=-1)))
            return
        packed, manifest_frame, headers = current
        manifest = packed.manifest
        if request.version != manifest.version:
            self._send(identity, manifest_frame)  # superseded (or unknown): here is the current version
            return
        if request.index >= manifest.num_chunks:
            self._bad(identity, f"fetch of chunk {request.index} of version {request.version} ({manifest.num_chunks} chunks)")
            return
        # Packed once at publish time: every receiver gets the same chunk memory, zero-copy.
        data = packed.chunk(request.index)
        if self._send(identity, headers[request.index], data):
            self.chunks_sent += 1
            self.sent_bytes += len(data)
            M.SENT_BYTES.labels(NAME).inc(len(data))

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
