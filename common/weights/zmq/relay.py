"""The fan-out half of a :class:`~rlef.common.weights.zmq.receiver.ZmqReceiver` (:mod:`rlef.common.weights.zmq`,
"Fan-out" and "Failures"): where the transfer fetches from (the hub, or a peer relay watched by a socket
monitor), and serving the chunks this receiver holds to peers that fetch from it.

:class:`RelayMixin` holds that state and those methods; the receiver calls :meth:`RelayMixin._init_relay`
from its constructor and supplies the rest of what the methods use: its hub socket and identity
(``_sock``, ``_identity``, ``_transport``), the transfer in progress (``_transfer``, ``_request_more``),
``_get``, ``_bad``, ``_wake``, ``receiver_id`` and ``relay_stall_s``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

from rlef.common.errors import MessageError, TransportError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import WeightsManifest, WeightsRequest, WeightsSource, encode
from rlef.common.protocol.router_loop import drain_router
from rlef.common.protocol.transport import Transport
from rlef.common.weights.zmq.wire import encode_chunk, send_frames

log = logging.getLogger(__name__)

_MAX_PENDING = 4096  # queued peer fetches a relay keeps (a child has ``credit`` of them at a time)
_PEER_GONE = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED


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


class RelayMixin:
    """Sources (fetching from a peer relay) and relaying (serving peers) of a ZmqReceiver (module docstring)."""

    def _init_relay(self, relay_bind: str | None, relay_host: str | None) -> None:
        self._relay_sock: zmq.Socket | None = None
        self.relay_endpoint = ""
        if relay_bind is not None:
            self._relay_sock = self._transport.server(zmq.ROUTER, relay_bind, router_handover=1)
            bound = self._relay_sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if relay_host:  # bound on a wildcard: advertise the address peers can reach
                bound = f"tcp://{relay_host}:{bound.rsplit(':', 1)[1]}"
            self.relay_endpoint = bound
        self.source_switches = 0
        self.relayed_bytes = 0  # chunk bytes this receiver served to peers
        self.received_from_peers = 0  # chunk bytes that came from a peer, not the hub
        self._held: _Held | None = None
        self._pending: dict[tuple[int, int], list[bytes]] = {}  # (version, index) -> peers waiting for it
        self._pending_since: dict[tuple[int, int], float] = {}  # when the first of them asked
        self._pending_count = 0
        self._next_pending_check = 0.0
        self._offered: WeightsSource | None = None
        self._source = _Source(self._transport, "", self._identity, self._sock)
        self._dead_to_report = ""

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

    # ------------------------------------------------------------------ relaying to peers

    def _serve_peers(self) -> None:
        assert self._relay_sock is not None
        drain_router(self._relay_sock, self._serve_request, lambda _identity, reason: self._bad(f"relay: {reason}"))

    def _serve_request(self, identity: bytes, frame: bytes) -> None:
        try:
            request = decode(frame, WeightsRequest, sender=identity[:64].decode(errors="replace"), max_frame=4096)
        except MessageError as exc:
            self._bad(f"relay: {exc}")
            return
        if request.op != "fetch":
            return  # peers ask the hub for versions; a relay only serves chunks
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
            send_frames(self._relay_sock, identity, [encode(transfer.manifest)], "weights relay")
        elif held is not None:
            send_frames(self._relay_sock, identity, [held.frame], "weights relay")

    def _relay(self, identity: bytes, version: int, index: int, view: memoryview, manifest: WeightsManifest) -> None:
        size = manifest.chunk_bytes
        data = view[index * size : min((index + 1) * size, manifest.total_bytes)]
        if send_frames(self._relay_sock, identity, encode_chunk(version, index, data), "weights relay"):
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
            if send_frames(self._relay_sock, identity, encode_chunk(version, index, data), "weights relay"):
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
                        send_frames(self._relay_sock, identity, [frame], "weights relay")
