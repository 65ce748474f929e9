"""The receiving side of the zmq weights channel (actors, the evaluator): :class:`ZmqReceiver`'s background
thread asks the hub for new versions, pulls their chunks with ``credit`` requests in flight, checks each
against the manifest, and hands out whole versions (:mod:`rlef.common.weights.zmq`). Fetching from and serving
peer relays is the :class:`~rlef.common.weights.zmq.relay.RelayMixin` half."""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import torch
import zmq

from rlef.common.errors import MessageError, WeightsError
from rlef.common.log_limit import LogLimiter
from rlef.common.protocol.base import Message
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, WeightsChunk, WeightsManifest, WeightsRequest, WeightsSource, encode
from rlef.common.protocol.transport import Transport
from rlef.common.weights.base import ReceivedWeights, ThreadedReceiver
from rlef.common.weights.packing import chunk_checksum, expected_chunk_checksum, populated, unpack, version_checksum
from rlef.common.weights.zmq.relay import RelayMixin, _Held
from rlef.common.weights.zmq.wire import NAME, POLL_MS
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

_HOST_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class _Transfer:
    manifest: WeightsManifest
    payload: torch.Tensor
    view: memoryview
    received: list[bool]
    started: float
    last_progress: float
    requested: list[bool] = field(default_factory=list)
    count: int = 0
    in_flight: int = 0
    next_request: int = 0

    def chunk_range(self, index: int) -> tuple[int, int]:
        size = self.manifest.chunk_bytes
        return index * size, min((index + 1) * size, self.manifest.total_bytes)


class ZmqReceiver(RelayMixin, ThreadedReceiver):
    """Actor side: a background thread pulls versions (from the hub or a peer) and, with ``relay_bind``,
    serves them on to peers; ``poll`` hands out finished ones."""

    transport_name = NAME

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        receiver_id: str,
        *,
        credit: int = 8,
        poll_interval_s: float = 0.5,
        stall_timeout_s: float = 10.0,
        relay_bind: str | None = None,
        relay_host: str | None = None,
        relay_stall_s: float = 3.0,
    ):
        super().__init__(f"weights-recv-{receiver_id}")
        self.endpoint = endpoint
        self.receiver_id = receiver_id
        self.credit = credit
        self.poll_interval_s = poll_interval_s
        self.stall_timeout_s = stall_timeout_s
        self.relay_stall_s = relay_stall_s
        self._transport = transport
        self._identity = f"{receiver_id}/{uuid.uuid4().hex[:8]}".encode()
        # immediate: while the hub is away requests fail at once instead of piling up for a burst of answers.
        self._sock = transport.client(zmq.DEALER, endpoint, identity=self._identity, immediate=1)
        self._init_relay(relay_bind, relay_host)
        self.hub_version = -1
        self.checksum_failures = 0
        self.bad_messages = 0
        self._bad_log = LogLimiter(log, f"weights receiver {receiver_id}: bad messages")
        self.restarts = 0
        self._failures_in_a_row = 0
        self._transfer: _Transfer | None = None
        self._next_get = 0.0
        self._start_thread()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop_thread()

    # ------------------------------------------------------------------ transfer thread

    def _send(self, request: WeightsRequest, sock: zmq.Socket | None = None) -> bool:
        try:
            (sock or self._sock).send(encode(request), zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected yet / HWM: the stall timer or next poll retries
            return False

    def _get(self) -> None:
        self._send(WeightsRequest(op="get", receiver_id=self.receiver_id, version=self._have,
                                  relay=self.relay_endpoint, dead=self._dead_to_report))
        self._next_get = time.monotonic() + self.poll_interval_s

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._tick()
                poller = zmq.Poller()
                poller.register(self._sock, zmq.POLLIN)
                source = self._source
                if source.is_peer:
                    poller.register(source.sock, zmq.POLLIN)
                    if source.monitor is not None:
                        poller.register(source.monitor, zmq.POLLIN)
                if self._relay_sock is not None:
                    poller.register(self._relay_sock, zmq.POLLIN)
                ready = dict(poller.poll(POLL_MS))
                if self._sock in ready:
                    self._drain(self._sock, from_peer=False)
                if source is self._source and source.is_peer:
                    if source.sock in ready:
                        self._drain(source.sock, from_peer=True)
                    if source is self._source and source.monitor is not None and source.monitor in ready:
                        self._on_monitor(source)
                if self._relay_sock is not None and self._relay_sock in ready:
                    self._serve_peers()
        finally:
            self._source.close()
            self._sock.close(0)
            if self._relay_sock is not None:
                self._relay_sock.close(0)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._pending:
            self._forget_stale_fetches(now)
        transfer = self._transfer
        if transfer is None and (now >= self._next_get or self._wake.is_set()):
            self._wake.clear()
            self._get()
        elif transfer is not None and transfer.count < transfer.manifest.num_chunks:
            if transfer.in_flight < self.credit:  # requests a not-yet-connected source refused: try again
                self._request_more(transfer)
            idle = now - transfer.last_progress
            if self._source.is_peer and idle > self.relay_stall_s:
                log.warning("weights receiver %s: peer %s sent nothing for %.1fs; fetching the rest from the hub",
                            self.receiver_id, self._source.endpoint, idle)
                self._switch_source("")
            elif idle > self.stall_timeout_s:
                log.warning("weights receiver %s: version %d stalled at %d/%d chunks from %s; restarting",
                            self.receiver_id, transfer.manifest.version, transfer.count,
                            transfer.manifest.num_chunks, self.endpoint)
                self._restart("stall")
                self._get()

    def _drain(self, sock: zmq.Socket, from_peer: bool) -> None:
        for _ in range(1000):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._handle(sock, frame.buffer, from_peer)
            except (WeightsError, OSError, MemoryError, ValueError, RuntimeError) as exc:
                # e.g. a manifest too large to allocate: drop it, keep serving the actor.
                self._discard_more(sock)
                self._restart("error")
                self._bad(f"{type(exc).__name__}: {exc}")
                self._next_get = time.monotonic() + self.stall_timeout_s
            if sock is not self._sock and sock is not self._source.sock:
                return  # the source changed under us: that socket is closed

    @staticmethod
    def _discard_more(sock: zmq.Socket) -> None:
        while not sock.closed and sock.getsockopt(zmq.RCVMORE):
            sock.recv_into(bytearray())

    def _restart(self, reason: str) -> None:
        self.restarts += 1
        M.RECEIVER_RESTARTS.labels(NAME, reason).inc()
        self._transfer = None
        if self._source.is_peer:
            self._switch_source("", count=False)

    def _bad(self, reason: str) -> None:
        self.bad_messages += 1
        M.RECEIVER_BAD_MESSAGES.labels(NAME).inc()
        if self.bad_messages == 1 or self.bad_messages % 1000 == 0:
            self._bad_log.warning("weights receiver %s: dropped a bad message from %s (%d so far): %s",
                                  self.receiver_id, self.endpoint, self.bad_messages, reason)

    def _handle(self, sock: zmq.Socket, frame: memoryview, from_peer: bool) -> None:
        more = sock.getsockopt(zmq.RCVMORE)
        try:
            message: Message = decode(frame, (WeightsManifest, WeightsChunk, WeightsSource, Control), sender=self.endpoint)
        except MessageError as exc:
            self._discard_more(sock)
            self._bad(str(exc))
            return
        if isinstance(message, WeightsChunk):
            self._on_chunk(sock, message, more, from_peer)
            return
        self._discard_more(sock)
        if isinstance(message, WeightsManifest):
            self._on_manifest(message)
        elif isinstance(message, WeightsSource):
            if not from_peer:
                self._on_source(message)
        elif isinstance(message, Control):
            if message.op != "ack":
                self._bad(f"unexpected control op {message.op} on the weights channel")
            elif not from_peer:
                self.hub_version = message.version
    # ------------------------------------------------------------------ receiving

    def _on_manifest(self, manifest: WeightsManifest) -> None:
        self.hub_version = max(self.hub_version, manifest.version)
        if manifest.version <= self._have:
            return  # stale answer to an earlier request
        current = self._transfer
        if current is not None:
            if current.manifest.version >= manifest.version:
                return  # duplicate answer (a get crossed our fetches), or an older one from a lagging peer
            self._supersede_pending(manifest)
            self._restart("superseded")
        if manifest.total_bytes > _HOST_MEMORY:
            raise WeightsError(f"manifest of version {manifest.version} from {self.endpoint} announces "
                               f"{manifest.total_bytes} bytes, more than this host's memory ({_HOST_MEMORY})")
        if version_checksum(manifest.chunk_xxh3) != manifest.checksum:
            raise WeightsError(f"manifest of version {manifest.version}: its chunk checksums do not match its checksum")
        offered = self._offered
        self._offered = None
        endpoint = offered.endpoint if offered is not None and offered.version == manifest.version else self._source.endpoint
        self._dead_to_report = ""
        if endpoint != self._source.endpoint:
            self._source.close()
            self._source = self._open_source(endpoint)
        started = time.monotonic()
        transfer = _Transfer(
            manifest=manifest, payload=torch.empty(0, dtype=torch.uint8), view=memoryview(b""),
            received=[False] * manifest.num_chunks, requested=[False] * manifest.num_chunks, started=started,
            last_progress=started,
        )
        self._transfer = transfer
        # Ask for the first chunks before allocating: they travel while the buffer's pages are mapped.
        self._request_more(transfer)
        transfer.payload = populated(manifest.total_bytes)
        transfer.view = memoryview(transfer.payload.numpy()).cast("B")
        transfer.last_progress = time.monotonic()
        if manifest.num_chunks == 0:
            self._finish(transfer)

    def _request_more(self, transfer: _Transfer) -> None:
        n = transfer.manifest.num_chunks
        while transfer.in_flight < self.credit and transfer.next_request < n:
            index = transfer.next_request
            transfer.next_request += 1
            if transfer.requested[index]:
                continue
            request = WeightsRequest(op="fetch", receiver_id=self.receiver_id, version=transfer.manifest.version, index=index)
            if not self._send(request, self._source.sock):
                transfer.next_request -= 1  # not connected yet: asked again on the next chunk or switch
                return
            transfer.requested[index] = True
            transfer.in_flight += 1

    def _on_chunk(self, sock: zmq.Socket, chunk: WeightsChunk, more: int, from_peer: bool) -> None:
        transfer = self._transfer
        if transfer is None or chunk.version != transfer.manifest.version or not transfer.view.nbytes and transfer.manifest.total_bytes:
            self._discard_more(sock)
            return  # a chunk of a superseded or abandoned transfer still in flight
        manifest = transfer.manifest
        index = chunk.index
        if index >= manifest.num_chunks:
            self._discard_more(sock)
            self._bad(f"chunk {index} of version {chunk.version} is out of range ({manifest.num_chunks} chunks)")
            return
        if transfer.received[index]:  # asked of two sources around a switch: the first copy won
            self._discard_more(sock)
            return
        start, end = transfer.chunk_range(index)
        target = transfer.view[start:end]
        if more:  # the bytes are the next frame: straight into the payload buffer
            nbytes = sock.recv_into(target, flags=zmq.NOBLOCK)
            self._discard_more(sock)
        else:  # a single-frame chunk (bytes inside the message)
            nbytes = len(chunk.data)
            if nbytes == end - start:
                target[:] = chunk.data
        transfer.in_flight = max(0, transfer.in_flight - 1)
        if nbytes != end - start:
            self._corrupt(transfer, f"chunk {index} has {nbytes} bytes, expected {end - start}")
            return
        if chunk_checksum(target) != expected_chunk_checksum(manifest, index):
            self._corrupt(transfer, f"chunk {index} fails its xxh3 checksum")
            return
        transfer.received[index] = True
        transfer.count += 1
        transfer.last_progress = time.monotonic()
        if from_peer:
            self.received_from_peers += end - start
        M.RECEIVED_BYTES.labels(NAME).inc(end - start)
        self._request_more(transfer)
        self._serve_waiting(manifest.version, index, target)
        if transfer.count == manifest.num_chunks:
            self._finish(transfer)

    def _corrupt(self, transfer: _Transfer, reason: str) -> None:
        self.checksum_failures += 1
        self._failures_in_a_row += 1
        M.CHECKSUM_FAILURES.labels(NAME).inc()
        log.warning("weights receiver %s: version %d from %s is corrupt (%s); not applied, requesting it again",
                    self.receiver_id, transfer.manifest.version, self._source.endpoint or self.endpoint, reason)
        self._restart("corrupt")
        # Re-request at once the first time, then back off so a persistently broken hub is not hammered.
        delay = 0.0 if self._failures_in_a_row <= 1 else min(0.1 * 2 ** self._failures_in_a_row, 5.0)
        self._next_get = time.monotonic() + delay
        self._wake.clear()

    def _finish(self, transfer: _Transfer) -> None:
        manifest = transfer.manifest
        try:
            tensors = unpack(manifest, transfer.payload)
        except WeightsError as exc:
            self._corrupt(transfer, str(exc))
            return
        seconds = time.monotonic() - transfer.started
        self._transfer = None
        self._failures_in_a_row = 0
        if self._relay_sock is not None:  # keep serving this version to peers (late joiners, our successor)
            self._held = _Held(manifest, transfer.view, encode(manifest))
        if self._source.is_peer:
            self._switch_source("", count=False)
        self._deliver(ReceivedWeights(version=manifest.version, tensors=tensors, checksum=manifest.checksum,
                                      nbytes=manifest.total_bytes, seconds=seconds))
        M.RECEIVE_SECONDS.labels(NAME).observe(seconds)
        M.RECEIVED_VERSION.labels(NAME).set(manifest.version)
        log.info("weights receiver %s: version %d complete (%d bytes in %.2fs)", self.receiver_id,
                 manifest.version, manifest.total_bytes, seconds)
        self._next_get = time.monotonic()  # ask at once whether an even newer one is there
