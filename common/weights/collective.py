"""Weights by torch.distributed broadcast from learner rank 0 into a process group it forms with the actors.

Group: its own ``TCPStore`` (master on the learner hub at ``endpoints.learner_host:weights.init_port``,
under the key prefix ``rlef-weights/``) and a process group built directly on it (``ProcessGroupGloo`` on
CPU, ``ProcessGroupNCCL`` on GPUs: the very same code), so it never touches the learner ranks' default
group. Rank 0 is the hub; each receiver takes the next free rank from the store's atomic counter, so actors
need no rank in their config. The world size (1 + actors) is fixed when the group forms: a receiver that dies
stalls every later broadcast until ``timeout_s`` and the group cannot grow. Elastic fleets use ``zmq``.

Per version (sequence number ``k`` = 1, 2, ...): the hub sets store key ``seq/k`` (receivers idle in
``store.wait`` on it, not in a collective, so an idle period never trips the collective timeout), then
broadcasts the encoded msgpack :class:`~rlef.common.protocol.messages.WeightsManifest` (its length as one int64,
then its bytes), then the flat payload (same layout and per-chunk xxh3 checksums as the zmq transport, one chunk
per bucket, :mod:`rlef.common.weights.packing`) in buckets of ``bucket_bytes``. Receivers verify the checksums before a
version becomes visible to ``poll``. If the hub gets several versions while a broadcast is running, only the
newest is broadcast next (superseded ones are skipped by everybody).

Threads: the hub forms the group and broadcasts in a background thread (``publish`` packs, hands over and
returns); each receiver joins and receives in a background thread. GPU-only part (kept thin, untested
here): with ``backend="nccl"`` each bucket is staged through a CUDA buffer on the current device.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping

import torch
import torch.distributed as dist

from rlef.common.errors import MessageError, TransportError, WeightsError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import WeightsManifest, encode
from rlef.common.weights.base import ReceivedWeights, ThreadedReceiver, WeightPublisher
from rlef.common.weights.packing import PackedVersion, first_bad_chunk, pack, populated, unpack
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

NAME = "collective"
PREFIX = "rlef-weights/"
_WAIT_SLICE = datetime.timedelta(seconds=1)


def _make_group(store: dist.Store, rank: int, world_size: int, backend: str, timeout: datetime.timedelta) -> dist.ProcessGroup:
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":  # GPU fleets only
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise WeightsError(f"weights.backend: unknown collective backend {backend!r}")


class _Group:
    """The broadcast group seen from one member; ``broadcast`` moves a CPU uint8 tensor in place from rank 0."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, backend: str, timeout: datetime.timedelta):
        self.store = store
        self.rank = rank
        self.backend = backend
        self.pg = _make_group(store, rank, world_size, backend, timeout)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        if self.device.type == "cpu":
            self.pg.broadcast([tensor], opts).wait()
            return
        staged = tensor.to(self.device, non_blocking=False)  # GPU path: nccl moves device memory only
        self.pg.broadcast([staged], opts).wait()
        if self.rank != 0:
            tensor.copy_(staged.cpu())


def _broadcast_payload(group: _Group, payload: torch.Tensor, bucket_bytes: int) -> None:
    total = payload.numel()
    for start in range(0, total, bucket_bytes):
        group.broadcast(payload[start : min(start + bucket_bytes, total)])


class CollectivePublisher(WeightPublisher):
    """Rank 0 of the learner-actors group: forms it in the background and broadcasts each new version."""

    transport_name = NAME

    def __init__(self, *, host: str, port: int, world_size: int, backend: str = "gloo", bucket_bytes: int = 64 << 20,
                 timeout_s: float = 600.0):
        if world_size < 2:
            raise WeightsError(f"collective weights need at least one actor (world size {world_size})")
        self.world_size = world_size
        self.bucket_bytes = bucket_bytes
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self._backend = backend
        try:
            master = dist.TCPStore(host, port, world_size, is_master=True, timeout=self.timeout, wait_for_workers=False)
        except (RuntimeError, dist.DistStoreError) as exc:
            raise TransportError(f"collective weights: cannot start the group's store on {host}:{port}: {exc}") from exc
        self._master = master
        self._store = dist.PrefixStore(PREFIX, master)
        self._pending: PackedVersion | None = None
        self._published = -1
        self._broadcast = -1
        self._cond = threading.Condition()
        self._stop = False
        self.error: BaseException | None = None
        self.formed = threading.Event()  # set once every receiver joined the group
        self._thread = threading.Thread(target=self._run, name="weights-collective-hub", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self._published

    @property
    def broadcast_version(self) -> int:
        """Newest version every receiver has been sent (-1: none yet)."""
        return self._broadcast

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        if version <= self._published:
            raise WeightsError(f"weights version {version} published after version {self._published}: versions must increase")
        if self.error is not None:
            raise WeightsError(f"collective weights group failed: {self.error}") from self.error
        start = time.perf_counter()
        packed = pack(version, state_dict, self.bucket_bytes)
        with self._cond:
            self._pending = packed  # a version not yet broadcast is superseded
            self._published = version
            self._cond.notify_all()
        M.PUBLISH_SECONDS.labels(NAME).observe(time.perf_counter() - start)
        M.PUBLISHED_BYTES.labels(NAME).inc(packed.manifest.total_bytes)
        M.PUBLISHED_VERSION.labels(NAME).set(version)

    def wait_broadcast(self, version: int, timeout_s: float) -> bool:
        """Block until ``version`` (or newer) went out to every receiver; for tests and orderly shutdown."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._broadcast < version and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            return self._broadcast >= version

    def _run(self) -> None:
        try:
            group = _Group(self._store, 0, self.world_size, self._backend, self.timeout)
            log.info("collective weights: group of %d formed (%s)", self.world_size, self._backend)
            self.formed.set()
            seq = 0
            while True:
                with self._cond:
                    while self._pending is None and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    packed, self._pending = self._pending, None
                seq += 1
                header = encode(packed.manifest)
                self._store.set(f"seq/{seq}", str(packed.manifest.version))
                group.broadcast(torch.tensor([len(header)], dtype=torch.int64))
                group.broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8))
                _broadcast_payload(group, packed.payload, self.bucket_bytes)
                M.SENT_BYTES.labels(NAME).inc(packed.manifest.total_bytes * (self.world_size - 1))
                with self._cond:
                    self._broadcast = packed.manifest.version
                    self._cond.notify_all()
        except Exception as exc:  # a dead peer or timeout breaks the fixed group for good: report, stop serving
            log.error("collective weights hub: the group failed (%s); no further versions go out", exc)
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)


class CollectiveReceiver(ThreadedReceiver):
    """A non-zero rank of the learner-actors group: joins it in the background and receives every broadcast."""

    transport_name = NAME

    def __init__(self, *, host: str, port: int, world_size: int, backend: str = "gloo", bucket_bytes: int = 64 << 20,
                 timeout_s: float = 600.0, receiver_id: str = "actor"):
        super().__init__(f"weights-collective-{receiver_id}")
        self.receiver_id = receiver_id
        self.world_size = world_size
        self.bucket_bytes = bucket_bytes
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self._host, self._port, self._backend = host, port, backend
        self.rank = -1
        self.checksum_failures = 0
        self.error: BaseException | None = None
        self._start_thread()

    def _poll_done(self) -> bool:
        return self._stop.is_set() or self.error is not None  # a failed group delivers nothing more

    def notify(self, hub_version: int) -> None:
        """Ignored: every broadcast reaches every rank by itself."""

    def _run(self) -> None:
        try:
            master = dist.TCPStore(self._host, self._port, self.world_size, is_master=False, timeout=self.timeout)
            store = dist.PrefixStore(PREFIX, master)
            self.rank = store.add("rank", 1)
            if self.rank >= self.world_size:
                raise WeightsError(f"collective weights: {self.receiver_id} got rank {self.rank} but the group has "
                                   f"{self.world_size} members (weights.actors too small?)")
            group = _Group(store, self.rank, self.world_size, self._backend, self.timeout)
            log.info("collective weights: %s joined as rank %d of %d", self.receiver_id, self.rank, self.world_size)
            seq = 0
            while not self._stop.is_set():
                seq += 1
                key = f"seq/{seq}"
                while not self._stop.is_set():
                    try:
                        store.wait([key], _WAIT_SLICE)
                        break
                    except (RuntimeError, dist.DistStoreError):  # not yet: the wait slice ran out
                        continue
                if self._stop.is_set():
                    return
                self._receive(group)
        except Exception as exc:
            if self._stop.is_set():  # closing: the hub may be gone already
                return
            log.error("collective weights receiver %s: the group failed (%s); no further versions arrive", self.receiver_id, exc)
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def _receive(self, group: _Group) -> None:
        length = torch.zeros(1, dtype=torch.int64)
        group.broadcast(length)
        header = torch.empty(int(length.item()), dtype=torch.uint8)
        group.broadcast(header)
        try:
            manifest = decode(header.numpy().tobytes(), WeightsManifest, sender=f"{self._host}:{self._port}")
        except MessageError as exc:  # cannot happen with an honest hub; the payload size is then unknown
            raise WeightsError(f"collective weights: bad manifest from the hub: {exc}") from exc
        started = time.monotonic()
        payload = populated(manifest.total_bytes)
        _broadcast_payload(group, payload, self.bucket_bytes)
        M.RECEIVED_BYTES.labels(NAME).inc(manifest.total_bytes)
        if manifest.total_bytes and first_bad_chunk(manifest, memoryview(payload.numpy()).cast("B")) is not None:
            self.checksum_failures += 1
            M.CHECKSUM_FAILURES.labels(NAME).inc()
            log.warning("collective weights receiver %s: version %d failed its checksum; not applied (the next "
                        "version replaces it)", self.receiver_id, manifest.version)
            return
        received = ReceivedWeights(version=manifest.version, tensors=unpack(manifest, payload), checksum=manifest.checksum,
                                   nbytes=manifest.total_bytes, seconds=time.monotonic() - started)
        M.RECEIVE_SECONDS.labels(NAME).observe(received.seconds)
        M.RECEIVED_VERSION.labels(NAME).set(manifest.version)
        self._deliver(received)

    def close(self) -> None:
        self._stop_thread(timeout=5.0)
