"""The default weights transport: chunked, checksummed, credit-flow-controlled transfer over ZeroMQ.

Protocol (ROUTER bound on the hub at ``endpoints.weights_port``, one DEALER per receiver; every frame one
message of rlef.common.messages):

    receiver -> hub   WeightsRequest(op="get", version=<newest version the receiver holds, -1 none>)
    hub -> receiver   WeightsManifest of the current version when it is newer,
                      else Control(op="ack", version=<hub's current version, -1 none>)
    receiver -> hub   WeightsRequest(op="fetch", version=v, index=i)        (``credit`` of them in flight)
    hub -> receiver   WeightsChunk(v, i, bytes)   or, when v was superseded meanwhile, the newer manifest

This is the ZeroMQ guide's "file transfer" model 3: the receiver pulls, keeping ``credit`` chunk requests
in flight, so the hub holds no per-receiver state or queue beyond ``credit`` chunks and serves any number of
receivers from one packed copy of the version. Late joiners simply ``get`` the current version; a new
version supersedes a transfer in progress (the next fetch of the old version is answered with the new
manifest, and chunks of the old one still in flight are ignored).

How receivers learn of new versions: an idle receiver sends ``get`` every ``weights.poll_interval_s`` (a
few bytes); ``notify(v)`` (wired to the control channel's version messages by the actor) makes it ask at
once. The receiver verifies the sha256 of the whole payload (hashed chunk by chunk as the in-order prefix
grows), hands out a version only whole and verified, and on a mismatch counts it, logs the sender and
version, and requests the version again (with back-off when it keeps failing). A transfer without progress
for ``weights.stall_timeout_s`` (hub restarted, chunk lost) is restarted.

Threads: the hub serves from a background thread (training never waits on receivers; ``publish`` only packs
and hashes, once per version); each receiver transfers in a background thread (the actor never waits
either; ``poll`` just takes the finished version) and hashes in a second one. Each socket is used by
exactly one thread.

Memory and copies: ``publish`` copies the state dict once, straight into the chunk frames (one region; the
learner may reuse its tensors as soon as it returns); every receiver is served those frames zero-copy, and
superseded versions are dropped at once, so the hub holds one packed version (plus any still in flight).
A receiver parses chunk frames without copying and copies each chunk once into the version's buffer; the
buffer of a version is recycled for a later one once every tensor view of it is gone
(:func:`~rlef.common.weights.packing.populated`), so drop a ReceivedWeights after applying it.

Versions are assumed to increase: a hub restarted from an older checkpoint announces a lower version, and a
receiver holding a newer one waits until the hub's version passes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import zmq

from rlef.common.errors import MessageError, WeightsError
from rlef.common.messages import Control, Message, WeightsChunk, WeightsManifest, WeightsRequest, decode, encode
from rlef.common.router_loop import serve_router
from rlef.common.transport import Transport
from rlef.common.weights.base import ReceivedWeights, ThreadedReceiver, WeightPublisher
from rlef.common.weights.packing import HASH_BLOCK, FramedVersion, pack_frames, populated, unpack
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

NAME = "zmq"
_POLL_MS = 50
_RECEIVER_WINDOW_S = 60.0
_ZERO_COPY_BYTES = 64 << 10
_HOST_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_DATA_KEY = b"\xa4data"  # msgpack fixstr "data": the key of WeightsChunk.data in any field order
_EMPTY_BIN = b"\xc4\x00"


def _bin_header(nbytes: int) -> bytes:
    if nbytes < 1 << 8:
        return b"\xc4" + nbytes.to_bytes(1, "big")
    if nbytes < 1 << 16:
        return b"\xc5" + nbytes.to_bytes(2, "big")
    return b"\xc6" + nbytes.to_bytes(4, "big")


def chunk_frame_parts(version: int, index: int, nbytes: int) -> tuple[bytes, bytes]:
    """The bytes before and after a chunk's data in ``encode(WeightsChunk(version, index, data))``, taken
    from ``encode`` itself (a chunk with empty data, whose empty bin is replaced by the real bin header), so
    a frame ``prefix + data + suffix`` is byte for byte what ``encode`` produces whatever its field order
    (a test checks that)."""
    head = encode(WeightsChunk(version=version, index=index, data=b""))
    at = head.find(_DATA_KEY + _EMPTY_BIN)
    if at < 0 or head.find(_DATA_KEY + _EMPTY_BIN, at + 1) >= 0:
        raise WeightsError("cannot locate the data field in an encoded WeightsChunk (messages.encode changed?)")
    cut = at + len(_DATA_KEY)
    return head[:cut] + _bin_header(nbytes), head[cut + len(_EMPTY_BIN) :]


def encode_chunk(version: int, index: int, data: memoryview | bytes) -> bytes:
    """``encode(WeightsChunk(version, index, data))`` with one copy of ``data``."""
    prefix, suffix = chunk_frame_parts(version, index, len(data))
    return b"".join((prefix, data, suffix))


def parse_chunk(frame: memoryview, sender: str | None = None) -> tuple[int, int, memoryview] | None:
    """Zero-copy decoding of a WeightsChunk frame: (version, index, view of the data in ``frame``).

    The data's bin is located after the "data" key and cut out; the rest of the frame (a few dozen bytes)
    goes through the full ``decode`` with an empty data field, so every other field is validated as usual.
    None when the frame does not have that shape or the rest does not validate (another message kind, or
    anything unusual): the caller then decodes the whole frame the ordinary way, which reports the error.
    """
    head = bytes(frame[:256])
    at = head.find(_DATA_KEY)
    if at < 0 or at + len(_DATA_KEY) >= len(head):
        return None
    pos = at + len(_DATA_KEY)
    width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(head[pos])
    if width is None or pos + 1 + width > len(head):
        return None
    nbytes = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
    start = pos + 1 + width
    end = start + nbytes
    if end > len(frame):
        return None
    rest = b"".join((head[:pos], _EMPTY_BIN, frame[end:]))
    try:
        chunk = decode(rest, WeightsChunk, sender=sender, max_frame=4096)
    except MessageError:
        return None
    return chunk.version, chunk.index, frame[start:end]


class ZmqPublisher(WeightPublisher):
    """Hub side: packs each version once and serves manifests and chunks from a background thread."""

    transport_name = NAME

    def __init__(self, transport: Transport, endpoint: str, *, chunk_bytes: int, hub_id: str = "learner-0"):
        self.endpoint = endpoint
        self.chunk_bytes = chunk_bytes
        self.hub_id = hub_id
        self._sock = transport.server(zmq.ROUTER, endpoint, router_handover=1)
        # What receivers connect to (the real port when ``endpoint`` asked for port 0).
        self.bound_endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._current: tuple[FramedVersion, bytes] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receivers: dict[bytes, float] = {}
        self._bad_logged: set[bytes] = set()
        self.bad_messages = 0
        self.chunks_sent = 0
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
        packed = pack_frames(version, state_dict, self.chunk_bytes,
                             lambda index, nbytes: chunk_frame_parts(version, index, nbytes))
        manifest_frame = encode(packed.manifest)
        with self._lock:
            self._current = (packed, manifest_frame)
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

    # ------------------------------------------------------------------ serving thread

    def _serve(self) -> None:
        serve_router(self._sock, self._stop, self._handle, self._bad, self._forget_receivers, poll_ms=_POLL_MS)

    def _forget_receivers(self, now: float) -> None:
        for identity in [i for i, seen in self._receivers.items() if now - seen > _RECEIVER_WINDOW_S]:
            del self._receivers[identity]  # restarted receivers come back under a new identity
        M.RECEIVERS.labels(NAME).set(self.receivers())

    def _bad(self, identity: bytes, reason: str) -> None:
        self.bad_messages += 1
        M.HUB_BAD_MESSAGES.labels(NAME).inc()
        if identity not in self._bad_logged and len(self._bad_logged) < 1000:  # log once per peer, count every time
            self._bad_logged.add(identity)
            log.warning("weights hub: dropped a bad message from %r: %s", identity[:64], reason)

    def _send(self, identity: bytes, frame: bytes | memoryview) -> bool:
        try:
            # NOBLOCK: a receiver that asks without reading (past the HWM) must not stall everybody else;
            # its request is dropped and its stall timer makes it start over.
            self._sock.send_multipart([identity, frame], zmq.NOBLOCK, copy=len(frame) < _ZERO_COPY_BYTES)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the receiver went away (ROUTER_MANDATORY); EAGAIN: HWM
            log.info("weights hub: cannot reach receiver %r: %s", identity[:64], exc)
            return False

    def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            request = decode(frame, WeightsRequest, sender=identity[:64].decode(errors="replace"), max_frame=4096)
        except MessageError as exc:
            self._bad(identity, str(exc))
            return
        self._receivers[identity] = time.monotonic()
        current = self._current
        if current is None:
            self._send(identity, encode(Control(op="ack", sender_id=self.hub_id, role="learner", version=-1)))
            return
        packed, manifest_frame = current
        manifest = packed.manifest
        if request.op == "get":
            if manifest.version > request.version:
                self._send(identity, manifest_frame)
            else:
                self._send(identity, encode(Control(op="ack", sender_id=self.hub_id, role="learner", version=manifest.version)))
            return
        if request.version != manifest.version:
            self._send(identity, manifest_frame)  # superseded (or unknown): here is the current version
            return
        if request.index >= manifest.num_chunks:
            self._bad(identity, f"fetch of chunk {request.index} of version {request.version} ({manifest.num_chunks} chunks)")
            return
        # The frame was encoded once at publish time: every receiver gets it zero-copy.
        if self._send(identity, packed.frames[request.index]):
            self.chunks_sent += 1
            M.SENT_BYTES.labels(NAME).inc(len(packed.data[request.index]))

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
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    next_request: int = 0
    next_hash: int = 0
    count: int = 0
    cancelled: bool = False

    def chunk_range(self, index: int) -> tuple[int, int]:
        size = self.manifest.chunk_bytes
        return index * size, min((index + 1) * size, self.manifest.total_bytes)


class _Hasher:
    """Hashes the in-order prefix of transfers in its own thread (hashlib releases the GIL on large
    updates), so verifying overlaps receiving; ``done`` yields (transfer, hex digest) once all was fed."""

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue[tuple[_Transfer, int, int] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[_Transfer, str]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def feed(self, transfer: _Transfer, start: int, end: int) -> None:
        self._queue.put((transfer, start, end))

    def finish(self, transfer: _Transfer) -> None:
        self._queue.put((transfer, -1, -1))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._hash(*item)
            del item  # hold no buffer while idle (it could not be recycled)

    def _hash(self, transfer: _Transfer, start: int, end: int) -> None:
        if transfer.cancelled:
            return
        if start < 0:
            self.done.put((transfer, transfer.hasher.hexdigest()))
            return
        for block in range(start, end, HASH_BLOCK):
            transfer.hasher.update(transfer.view[block : min(block + HASH_BLOCK, end)])


class ZmqReceiver(ThreadedReceiver):
    """Actor side: a background thread pulls versions from the hub; ``poll`` hands out finished ones."""

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
    ):
        super().__init__(f"weights-recv-{receiver_id}")
        self.endpoint = endpoint
        self.receiver_id = receiver_id
        self.credit = credit
        self.poll_interval_s = poll_interval_s
        self.stall_timeout_s = stall_timeout_s
        identity = f"{receiver_id}/{uuid.uuid4().hex[:8]}".encode()
        # immediate: while the hub is away requests fail at once instead of piling up for a burst of answers.
        self._sock = transport.client(zmq.DEALER, endpoint, identity=identity, immediate=1)
        self.hub_version = -1
        self.checksum_failures = 0
        self.bad_messages = 0
        self.restarts = 0
        self._failures_in_a_row = 0
        self._transfer: _Transfer | None = None
        self._next_get = 0.0
        self._hasher = _Hasher(f"weights-hash-{receiver_id}")
        self._start_thread()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop_thread()
            self._hasher.stop()

    # ------------------------------------------------------------------ transfer thread

    def _send(self, request: WeightsRequest) -> None:
        try:
            self._sock.send(encode(request), zmq.NOBLOCK)
        except zmq.Again:  # not connected yet / HWM: the stall timer or next poll retries
            pass

    def _get(self) -> None:
        self._send(WeightsRequest(op="get", receiver_id=self.receiver_id, version=self._have))
        self._next_get = time.monotonic() + self.poll_interval_s

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                transfer = self._transfer
                if transfer is None and (now >= self._next_get or self._wake.is_set()):
                    self._wake.clear()
                    self._get()
                elif (transfer is not None and transfer.count < transfer.manifest.num_chunks
                      and now - transfer.last_progress > self.stall_timeout_s):
                    log.warning("weights receiver %s: version %d stalled at %d/%d chunks from %s; restarting",
                                self.receiver_id, transfer.manifest.version, transfer.count,
                                transfer.manifest.num_chunks, self.endpoint)
                    self._restart("stall")
                    self._get()
                if poller.poll(_POLL_MS if self._hasher.done.empty() else 0):
                    for _ in range(1000):
                        try:
                            frame = self._sock.recv(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            self._handle(frame.buffer)
                        except (WeightsError, OSError, MemoryError, ValueError, RuntimeError) as exc:
                            # e.g. a manifest too large to allocate: drop it, keep serving the actor.
                            self._restart("error")
                            self._bad(f"{type(exc).__name__}: {exc}")
                            self._next_get = time.monotonic() + self.stall_timeout_s
                while not self._hasher.done.empty():
                    hashed, digest = self._hasher.done.get()
                    if hashed is self._transfer:
                        self._finish(hashed, digest)
                    del hashed  # hold no buffer while idle (it could not be recycled)
        finally:
            self._sock.close(0)

    def _restart(self, reason: str) -> None:
        self.restarts += 1
        M.RECEIVER_RESTARTS.labels(NAME, reason).inc()
        if self._transfer is not None:
            self._transfer.cancelled = True
        self._transfer = None

    def _bad(self, reason: str) -> None:
        self.bad_messages += 1
        M.RECEIVER_BAD_MESSAGES.labels(NAME).inc()
        if self.bad_messages == 1 or self.bad_messages % 1000 == 0:
            log.warning("weights receiver %s: dropped a bad message from %s (%d so far): %s",
                        self.receiver_id, self.endpoint, self.bad_messages, reason)

    def _handle(self, frame: memoryview) -> None:
        fast = parse_chunk(frame, sender=self.endpoint)
        if fast is not None:  # the common case: no copy until the chunk lands in the payload buffer
            self._on_chunk(*fast)
            return
        try:
            message: Message = decode(frame, (WeightsManifest, WeightsChunk, Control), sender=self.endpoint)
        except MessageError as exc:
            self._bad(str(exc))
            return
        if isinstance(message, WeightsChunk):
            self._on_chunk(message.version, message.index, memoryview(message.data))
        elif isinstance(message, WeightsManifest):
            self._on_manifest(message)
        elif isinstance(message, Control):
            if message.op != "ack":
                self._bad(f"unexpected control op {message.op} on the weights channel")
            else:
                self.hub_version = message.version

    def _on_manifest(self, manifest: WeightsManifest) -> None:
        self.hub_version = max(self.hub_version, manifest.version)
        if manifest.version <= self._have:
            return  # stale answer to an earlier request
        current = self._transfer
        if current is not None:
            if current.manifest.version == manifest.version:
                return  # duplicate answer (a get crossed our fetches)
            self._restart("superseded")
        if manifest.total_bytes > _HOST_MEMORY:
            raise WeightsError(f"manifest of version {manifest.version} from {self.endpoint} announces "
                               f"{manifest.total_bytes} bytes, more than this host's memory ({_HOST_MEMORY})")
        started = time.monotonic()
        # Ask for the first chunks before allocating: they travel while the buffer's pages are mapped.
        first = min(self.credit, manifest.num_chunks)
        for index in range(first):
            self._send(WeightsRequest(op="fetch", receiver_id=self.receiver_id, version=manifest.version, index=index))
        payload = populated(manifest.total_bytes)
        transfer = _Transfer(
            manifest=manifest,
            payload=payload,
            view=memoryview(payload.numpy()).cast("B"),
            received=[False] * manifest.num_chunks,
            started=started,
            last_progress=time.monotonic(),
            next_request=first,
        )
        self._transfer = transfer
        if manifest.num_chunks == 0:
            self._hasher.finish(transfer)

    def _fetch(self, transfer: _Transfer) -> None:
        self._send(WeightsRequest(op="fetch", receiver_id=self.receiver_id, version=transfer.manifest.version,
                                  index=transfer.next_request))
        transfer.next_request += 1

    def _on_chunk(self, version: int, index: int, data: memoryview) -> None:
        transfer = self._transfer
        if transfer is None or version != transfer.manifest.version:
            return  # a chunk of a superseded or abandoned transfer still in flight
        manifest = transfer.manifest
        if index >= manifest.num_chunks or transfer.received[index]:
            self._bad(f"chunk {index} of version {version} is out of range or a duplicate")
            return
        start, end = transfer.chunk_range(index)
        if len(data) != end - start:
            self._corrupt(transfer, f"chunk {index} has {len(data)} bytes, expected {end - start}")
            return
        # Ask for the next chunk first so the pipe stays full while this one is copied.
        if transfer.next_request < manifest.num_chunks:
            self._fetch(transfer)
        transfer.view[start:end] = data
        transfer.received[index] = True
        transfer.count += 1
        transfer.last_progress = time.monotonic()
        M.RECEIVED_BYTES.labels(NAME).inc(end - start)
        # Hand the in-order prefix to the hashing thread as it grows (chunks arrive in request order).
        first = transfer.next_hash
        while transfer.next_hash < manifest.num_chunks and transfer.received[transfer.next_hash]:
            transfer.next_hash += 1
        if transfer.next_hash > first:
            self._hasher.feed(transfer, transfer.chunk_range(first)[0], transfer.chunk_range(transfer.next_hash - 1)[1])
        if transfer.count == manifest.num_chunks:
            self._hasher.finish(transfer)

    def _corrupt(self, transfer: _Transfer, reason: str) -> None:
        self.checksum_failures += 1
        self._failures_in_a_row += 1
        M.CHECKSUM_FAILURES.labels(NAME).inc()
        log.warning("weights receiver %s: version %d from %s is corrupt (%s); not applied, requesting it again",
                    self.receiver_id, transfer.manifest.version, self.endpoint, reason)
        self._restart("corrupt")
        # Re-request at once the first time, then back off so a persistently broken hub is not hammered.
        delay = 0.0 if self._failures_in_a_row <= 1 else min(0.1 * 2 ** self._failures_in_a_row, 5.0)
        self._next_get = time.monotonic() + delay
        self._wake.clear()

    def _finish(self, transfer: _Transfer, digest: str) -> None:
        manifest = transfer.manifest
        if digest != manifest.sha256:
            self._corrupt(transfer, f"sha256 {digest[:16]}... != manifest {manifest.sha256[:16]}...")
            return
        try:
            tensors = unpack(manifest, transfer.payload)
        except WeightsError as exc:
            self._corrupt(transfer, str(exc))
            return
        seconds = time.monotonic() - transfer.started
        self._transfer = None
        self._failures_in_a_row = 0
        self._deliver(ReceivedWeights(version=manifest.version, tensors=tensors, sha256=manifest.sha256,
                                      nbytes=manifest.total_bytes, seconds=seconds))
        M.RECEIVE_SECONDS.labels(NAME).observe(seconds)
        M.RECEIVED_VERSION.labels(NAME).set(manifest.version)
        log.info("weights receiver %s: version %d complete (%d bytes in %.2fs)", self.receiver_id,
                 manifest.version, manifest.total_bytes, seconds)
        self._next_get = time.monotonic()  # ask at once whether an even newer one is there
