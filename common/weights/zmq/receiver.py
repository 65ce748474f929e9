"""The default weights transport: chunked, checksummed, credit-flow-controlled transfer over ZeroMQ, with
receivers relaying chunks to each other so the hub's egress per version does not grow with the fleet.

Protocol (ROUTER bound on the hub at ``endpoints.weights_port``, one DEALER per receiver; frames are
messages of rlef.common.messages):

    receiver -> hub   WeightsRequest(op="get", version=<newest held, -1 none>, relay=<its relay endpoint or "">)
    hub -> receiver   WeightsSource(v, endpoint) + WeightsManifest of the current version v when it is newer,
                      else Control(op="ack", version=<hub's current version, -1 none>)
    receiver -> src   WeightsRequest(op="fetch", version=v, index=i)        (``credit`` of them in flight)
    src -> receiver   [WeightsChunk(v, i), <chunk bytes>] (two frames)  or, when v was superseded, the newer manifest

``src`` is the hub itself (``endpoint == ""``) or a peer. This is the ZeroMQ guide's "file transfer" model 3:
the receiver pulls, keeping ``credit`` requests in flight, so a server holds no per-receiver state beyond
``credit`` chunks. The chunk bytes are their own frame: the hub sends them zero-copy from the packed
version, and the receiver reads them straight into the version's buffer (``recv_into``), then checks the
chunk's xxh3-64 against the manifest (:mod:`rlef.common.weights.packing`).

Fan-out (relay): a receiver built with ``relay_bind`` binds its own ROUTER and serves every chunk it holds
(of the version in transfer, or the last complete one) with the same fetch protocol; a fetch of a chunk it
does not have yet waits in a queue until the chunk lands (a pipeline: chunk i travels down the chain while
chunk i+1 arrives). The hub keeps the relaying receivers in a chain in order of arrival: the first fetches
from the hub, each other one from its predecessor, and a late joiner is appended at the end, so it is
served by a peer holding the whole version. The hub sends one copy per version whatever the fleet size;
receivers without a relay fetch from the hub directly.

Failures: a receiver watches the connection to its peer source (a socket monitor). When the peer dies
(connection closed or refused) it tells the hub (``get`` with ``dead=<endpoint>``); the hub drops the peer
from the chain and answers with the new predecessor, and the transfer continues there with the chunks
still missing (chunks already verified are kept). A peer that stays connected but sends nothing for
``relay_stall_s`` is bypassed: the receiver fetches the rest from the hub. Only the dead peer's successor
waits, and only until the disconnect is seen; everyone further down keeps being served by that successor.

Versions, verification, threads, memory: as before the fan-out. An idle receiver sends ``get`` every
``poll_interval_s``; ``notify(v)`` makes it ask at once. A version is handed out only whole with every
chunk checksum matching; a mismatch is counted, logged, and the version requested again (with back-off
when it keeps failing). A transfer without progress for ``stall_timeout_s`` is restarted. The hub serves
from a background thread (``publish`` only packs, once per version); each receiver transfers and relays in
one background thread; each socket is used by exactly one thread. Payload buffers are recycled
(:func:`~rlef.common.weights.packing.populated`) once every tensor view of them is gone, so drop a
ReceivedWeights after applying it. Versions are assumed to increase.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import zmq
from zmq.utils.monitor import parse_monitor_message

from rlef.common.errors import MessageError, TransportError, WeightsError
from rlef.common.log_limit import LogLimiter, printable
from rlef.common.messages import (
    Control,
    Message,
    WeightsChunk,
    WeightsManifest,
    WeightsRequest,
    WeightsSource,
    decode,
    encode,
)
from rlef.common.router_loop import serve_router
from rlef.common.transport import Transport
from rlef.common.weights.base import ReceivedWeights, ThreadedReceiver, WeightPublisher
from rlef.common.weights.packing import (
    PackedVersion,
    chunk_checksum,
    expected_chunk_checksum,
    pack,
    populated,
    unpack,
    version_checksum,
)
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

NAME = "zmq"
_POLL_MS = 50
_RECEIVER_WINDOW_S = 60.0
_ZERO_COPY_BYTES = 64 << 10
_HOST_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
_MAX_PENDING = 4096  # queued peer fetches a relay keeps (a child has ``credit`` of them at a time)
_PEER_GONE = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED


def encode_chunk(version: int, index: int, data: memoryview | bytes) -> list[bytes | memoryview]:
    """The frames of one chunk on the wire: the WeightsChunk header, then the chunk's bytes."""
    return [encode(WeightsChunk(version=version, index=index)), data]


def _send_frames(sock: zmq.Socket, identity: bytes, frames: list, what: str) -> bool:
    try:
        # NOBLOCK: a peer that asks without reading (past the HWM) must not stall everybody else; its
        # request is dropped and its stall timer makes it start over.
        sock.send_multipart([identity, *frames], zmq.NOBLOCK,
                            copy=all(len(f) < _ZERO_COPY_BYTES for f in frames))
        return True
    except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer went away (ROUTER_MANDATORY); EAGAIN: HWM
        log.info("%s: cannot reach %r: %s", what, identity[:64], exc)
        return False


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
        self._bad_logged: set[bytes] = set()
        self._bad_log = LogLimiter(log, "weights hub: bad messages")
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
        serve_router(self._sock, self._stop, self._handle, self._bad, self._forget_receivers, poll_ms=_POLL_MS)

    def _forget_receivers(self, now: float) -> None:
        for identity in [i for i, seen in self._receivers.items() if now - seen > _RECEIVER_WINDOW_S]:
            del self._receivers[identity]  # restarted receivers come back under a new identity
        self._chain = [m for m in self._chain if now - m.seen <= _RECEIVER_WINDOW_S]
        M.RECEIVERS.labels(NAME).set(self.receivers())

    def _bad(self, identity: bytes, reason: str) -> None:
        self.bad_messages += 1
        M.HUB_BAD_MESSAGES.labels(NAME).inc()
        if identity not in self._bad_logged and len(self._bad_logged) < 1000:  # once per peer, within the log budget
            self._bad_logged.add(identity)
            self._bad_log.warning("weights hub: dropped a bad message from %s: %s", identity[:64], reason)

    def _send(self, identity: bytes, *frames: bytes | memoryview) -> bool:
        return _send_frames(self._sock, identity, list(frames), "weights hub")

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


@dataclass
class _Held:
    """The last complete version, kept while this receiver relays it to peers."""

    manifest: WeightsManifest
    view: memoryview
    frame: bytes


class _Source:
    """Where the current transfer fetches from: the hub socket, or a DEALER to a peer relay (with a monitor
    that reports the peer's connection going away)."""

    def __init__(self, transport: Transport, endpoint: str, identity: bytes, hub_sock: zmq.Socket):
        self.endpoint = endpoint
        self.sock = hub_sock
        self.monitor: zmq.Socket | None = None
        self.connected = False
        if endpoint:
            self.sock = transport.client(zmq.DEALER, endpoint, identity=identity, immediate=1)
            self.monitor = self.sock.get_monitor_socket(_PEER_GONE | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)

    @property
    def is_peer(self) -> bool:
        return bool(self.endpoint)

    def close(self) -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None
        if self.endpoint:
            self.sock.close(0)


class ZmqReceiver(ThreadedReceiver):
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
        self._relay_sock: zmq.Socket | None = None
        self.relay_endpoint = ""
        if relay_bind is not None:
            self._relay_sock = transport.server(zmq.ROUTER, relay_bind, router_handover=1)
            bound = self._relay_sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if relay_host:  # bound on a wildcard: advertise the address peers can reach
                bound = f"tcp://{relay_host}:{bound.rsplit(':', 1)[1]}"
            self.relay_endpoint = bound
        self.hub_version = -1
        self.checksum_failures = 0
        self.bad_messages = 0
        self._bad_log = LogLimiter(log, f"weights receiver {receiver_id}: bad messages")
        self.restarts = 0
        self.source_switches = 0
        self.relayed_bytes = 0  # chunk bytes this receiver served to peers
        self.received_from_peers = 0  # chunk bytes that came from a peer, not the hub
        self._failures_in_a_row = 0
        self._transfer: _Transfer | None = None
        self._held: _Held | None = None
        self._pending: dict[tuple[int, int], list[bytes]] = {}  # (version, index) -> peers waiting for it
        self._pending_since: dict[tuple[int, int], float] = {}  # when the first of them asked
        self._pending_count = 0
        self._next_pending_check = 0.0
        self._offered: WeightsSource | None = None
        self._source = _Source(transport, "", self._identity, self._sock)
        self._dead_to_report = ""
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
                ready = dict(poller.poll(_POLL_MS))
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

    # ------------------------------------------------------------------ sources

    def _on_source(self, offer: WeightsSource) -> None:
        endpoint = "" if offer.endpoint == self.relay_endpoint else offer.endpoint
        transfer = self._transfer
        if transfer is not None and transfer.manifest.version == offer.version:
            if endpoint != self._source.endpoint:
                self._switch_source(endpoint)  # e.g. the hub's answer after we reported our peer dead
            return
        self._offered = WeightsSource(version=offer.version, endpoint=endpoint)

    def _switch_source(self, endpoint: str, count: bool = True) -> None:
        """Fetch from ``endpoint`` from now on ("" the hub): every chunk not yet received is asked again."""
        self._source.close()
        self._source = self._open_source(endpoint)
        if count:
            self.source_switches += 1
        transfer = self._transfer
        if transfer is not None:
            transfer.requested = list(transfer.received)
            transfer.in_flight = 0
            transfer.next_request = 0
            transfer.last_progress = time.monotonic()
            self._request_more(transfer)

    def _open_source(self, endpoint: str) -> _Source:
        """The source for ``endpoint``, or the hub when that peer endpoint cannot even be connected to (a
        relay address a broken or hostile receiver gave the hub): counted, and reported dead to the hub with
        the next ``get`` so that it leaves the chain."""
        try:
            return _Source(self._transport, endpoint, self._identity, self._sock)
        except TransportError as exc:
            self._bad(f"relay source {endpoint!r} offered by the hub: {exc}; fetching from the hub")
            self._dead_to_report = endpoint
            return _Source(self._transport, "", self._identity, self._sock)

    def _on_monitor(self, source: _Source) -> None:
        assert source.monitor is not None
        while True:
            try:
                event = parse_monitor_message(source.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                source.connected = True
            elif event["event"] & _PEER_GONE and (source.connected or event["event"] == zmq.EVENT_CONNECT_RETRIED):
                log.warning("weights receiver %s: relay peer %s is gone; asking the hub for another source",
                            self.receiver_id, source.endpoint)
                self._dead_to_report = source.endpoint
                self._switch_source("")  # the hub serves meanwhile; its answer may name a new peer
                self._get()
                return

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

    # ------------------------------------------------------------------ relaying to peers

    def _serve_peers(self) -> None:
        sock = self._relay_sock
        assert sock is not None
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._bad(f"relay: {len(frames)} frames, expected identity + message")
                continue
            identity, frame = frames
            try:
                request = decode(frame, WeightsRequest, sender=identity[:64].decode(errors="replace"), max_frame=4096)
            except MessageError as exc:
                self._bad(f"relay: {exc}")
                continue
            if request.op != "fetch":
                continue  # peers ask the hub for versions; a relay only serves chunks
            self._serve_fetch(identity, request.version, request.index)

    def _serve_fetch(self, identity: bytes, version: int, index: int) -> None:
        held, transfer = self._held, self._transfer
        if held is not None and held.manifest.version == version:
            if index < held.manifest.num_chunks:
                self._relay(identity, version, index, held.view, held.manifest)
            return
        if transfer is not None and transfer.manifest.version == version:
            if index >= transfer.manifest.num_chunks:
                return
            if transfer.received[index]:
                self._relay(identity, version, index, transfer.view, transfer.manifest)
            else:
                self._queue_fetch(version, index, identity)
            return
        newest = max(held.manifest.version if held else -1, transfer.manifest.version if transfer else -1)
        if version > newest:  # the peer heard of a version before us: queue it and ask the hub now
            self._queue_fetch(version, index, identity)
            self._wake.set()
        elif transfer is not None:
            _send_frames(self._relay_sock, identity, [encode(transfer.manifest)], "weights relay")
        elif held is not None:
            _send_frames(self._relay_sock, identity, [held.frame], "weights relay")

    def _relay(self, identity: bytes, version: int, index: int, view: memoryview, manifest: WeightsManifest) -> None:
        size = manifest.chunk_bytes
        data = view[index * size : min((index + 1) * size, manifest.total_bytes)]
        if _send_frames(self._relay_sock, identity, encode_chunk(version, index, data), "weights relay"):
            self.relayed_bytes += len(data)

    def _queue_fetch(self, version: int, index: int, identity: bytes) -> None:
        if self._pending_count < _MAX_PENDING:
            self._pending.setdefault((version, index), []).append(identity)
            self._pending_since.setdefault((version, index), time.monotonic())
            self._pending_count += 1

    def _forget_stale_fetches(self, now: float) -> None:
        """Drop fetches queued for longer than twice ``relay_stall_s``: their peer has gone to the hub by then
        (its own stall timer), and fetches of a version nobody publishes (found by fuzzing the relay: a
        confused or hostile peer) would otherwise hold their place in the bounded queue for ever, so that
        real peers' fetches of chunks still on their way were ignored."""
        if now < self._next_pending_check:
            return
        self._next_pending_check = now + 0.5
        for key in [k for k, since in self._pending_since.items() if now - since > 2 * self.relay_stall_s]:
            self._pending_count -= len(self._pending.pop(key, ()))
            del self._pending_since[key]

    def _serve_waiting(self, version: int, index: int, data: memoryview) -> None:
        self._pending_since.pop((version, index), None)
        waiting = self._pending.pop((version, index), None)
        if not waiting or self._relay_sock is None:
            return
        self._pending_count -= len(waiting)
        for identity in waiting:
            if _send_frames(self._relay_sock, identity, encode_chunk(version, index, data), "weights relay"):
                self.relayed_bytes += len(data)

    def _supersede_pending(self, manifest: WeightsManifest) -> None:
        """Peers waiting for chunks of an older version get the new manifest (as the hub would answer)."""
        frame = encode(manifest)
        told: set[bytes] = set()
        for (version, _), identities in list(self._pending.items()):
            if version < manifest.version:
                del self._pending[(version, _)]
                self._pending_since.pop((version, _), None)
                self._pending_count -= len(identities)
                for identity in identities:
                    if identity not in told and self._relay_sock is not None:
                        told.add(identity)
                        _send_frames(self._relay_sock, identity, [frame], "weights relay")
