"""The flat payload of one weights version: layout, packing (one copy), per-chunk checksums, zero-copy unpacking.

Layout (the meaning of :class:`~rlef.common.protocol.messages.WeightsManifest`): tensors in the state dict's order,
each tensor's raw little-endian bytes at ``offset`` (aligned to :data:`ALIGN` bytes so every tensor view of
the received buffer is aligned for its dtype), zero padding between them, cut into ``chunk_bytes`` chunks.

Integrity: ``chunk_xxh3`` holds the xxh3-64 of every chunk (little-endian uint64s) and ``checksum`` the
xxh3-64 of those bytes. CURVE authenticates the peer, so the checksum only has to catch corruption, and
xxh3 does that at memory speed (measured 5-10x sha256 here, see docs/benchmarks.md): sha256 cost a
receiver as long as the transfer itself. Per-chunk values let a receiver check each chunk the moment it
lands, in any order, and let a relaying receiver forward only chunks it has checked.

Invariants: a :class:`PackedVersion` is immutable once built (chunks are read-only memoryviews of its one
buffer, shared by every receiver); :func:`unpack` returns tensors that are views of one buffer owned by the
result (no per-tensor copy).
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import xxhash

from rlef.common.errors import WeightsError
from rlef.common.protocol.messages import TensorSpec, WeightsManifest

ALIGN = 64
HASH_BLOCK = 16 << 20  # bytes per hashlib call in state_dict_digest (hashlib releases the GIL on large updates)

if sys.byteorder != "little":  # the wire format is little-endian and tensors are copied as raw bytes
    raise ImportError("rlef.common.weights needs a little-endian host")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


class _RegionPool:
    """Recycles the memory of payload buffers. Mapping fresh memory is the costliest step of receiving a
    version on this machine (page faults: 2-3x the copy; MAP_POPULATE helps but still zeroes every page),
    so a buffer whose every tensor view is gone is reused for the next version of the same size.

    Safety rests on reference counts: ``torch.frombuffer`` keeps the mmap referenced from the tensor's
    storage until the last view of it dies, so a region whose only references are the pool's is free.
    Only ``keep`` regions are retained; a region still in use when it drops out of the pool is simply freed
    by its last view.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._regions: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.reused = 0

    def _free(self, index: int) -> bool:
        # References: the list slot and getrefcount's argument; any more means a live view.
        return sys.getrefcount(self._regions[index]) <= 2

    def tensor(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            # Index, never iterate: a loop variable (or enumerate's tuple) would hold a reference itself.
            for index in range(len(self._regions)):
                if len(self._regions[index]) == nbytes and self._free(index):
                    self.reused += 1
                    return torch.frombuffer(self._regions[index], dtype=torch.uint8)
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
            region = mmap.mmap(-1, nbytes, flags=flags)
            out = torch.frombuffer(region, dtype=torch.uint8)  # keeps ``region`` alive as long as any view
            self._regions.append(region)
            del region
            while len(self._regions) > self.keep:
                drop = next((i for i in range(len(self._regions) - 1) if self._free(i)), 0)
                self._regions.pop(drop)
            return out


_POOL = _RegionPool()


def populated(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` for a payload: recycled from an earlier version's buffer whose views are
    all gone, else freshly mapped with MAP_POPULATE. Its content is undefined: callers write every byte."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return _POOL.tensor(nbytes)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor (a copy only when it is not contiguous)."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[TensorSpec], int]:
    """Tensor specs (names, shapes, dtypes, aligned byte ranges) and the payload's total size."""
    specs: list[TensorSpec] = []
    offset = 0
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.device.type != "cpu":
            raise WeightsError(f"state dict entry {name!r} is on {tensor.device}; publish CPU tensors")
        dtype = DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise WeightsError(f"state dict entry {name!r} has unsupported dtype {tensor.dtype}")
        offset = _align(offset)
        nbytes = tensor.numel() * tensor.element_size()
        specs.append(TensorSpec(name=name, shape=list(tensor.shape), dtype=dtype, offset=offset, nbytes=nbytes))
        offset += nbytes
    return specs, offset


@dataclass(frozen=True)
class PackedVersion:
    """One version, packed once: its manifest (and encoded form) and the flat payload it describes."""

    manifest: WeightsManifest
    payload: torch.Tensor  # uint8, total_bytes long
    view: memoryview  # read-only bytes of ``payload``

    def chunk(self, index: int) -> memoryview:
        size = self.manifest.chunk_bytes
        return self.view[index * size : min((index + 1) * size, self.manifest.total_bytes)]


def chunk_checksum(data: memoryview | bytes) -> int:
    """xxh3-64 of one chunk (the value ``chunk_xxh3`` stores for it)."""
    return xxhash.xxh3_64_intdigest(data)


def chunk_checksums(view: memoryview, chunk_bytes: int) -> bytes:
    """``chunk_xxh3`` of a flat payload: the xxh3-64 of every ``chunk_bytes`` slice, as little-endian uint64s."""
    digests = [chunk_checksum(view[start : start + chunk_bytes]) for start in range(0, len(view), chunk_bytes)]
    return struct.pack(f"<{len(digests)}Q", *digests)


def version_checksum(chunk_xxh3: bytes) -> str:
    """The manifest's ``checksum``: xxh3-64 (hex) of the per-chunk checksums."""
    return xxhash.xxh3_64_hexdigest(chunk_xxh3)


def expected_chunk_checksum(manifest: WeightsManifest, index: int) -> int:
    return struct.unpack_from("<Q", manifest.chunk_xxh3, 8 * index)[0]


def first_bad_chunk(manifest: WeightsManifest, view: memoryview) -> int | None:
    """Index of the first chunk of ``view`` (the whole payload) whose checksum misses the manifest's, or None."""
    if version_checksum(manifest.chunk_xxh3) != manifest.checksum:
        return 0
    size = manifest.chunk_bytes
    for index in range(manifest.num_chunks):
        if chunk_checksum(view[index * size : (index + 1) * size]) != expected_chunk_checksum(manifest, index):
            return index
    return None


def pack(version: int, state_dict: Mapping[str, torch.Tensor], chunk_bytes: int) -> PackedVersion:
    """Copy ``state_dict`` into one flat buffer, then checksum its chunks."""
    specs, total = layout(state_dict)
    payload = populated(total)
    view = memoryview(payload.numpy()).cast("B")
    end_of_previous = 0
    for spec, tensor in zip(specs, state_dict.values()):
        payload[end_of_previous : spec.offset].zero_()  # alignment padding (the buffer may be recycled)
        end_of_previous = spec.offset + spec.nbytes
        if spec.nbytes:
            payload[spec.offset : spec.offset + spec.nbytes].copy_(
                tensor.detach().reshape(-1).contiguous().view(torch.uint8)
            )
    payload[end_of_previous:total].zero_()
    sums = chunk_checksums(view, chunk_bytes)
    manifest = WeightsManifest(
        version=version,
        tensors=specs,
        total_bytes=total,
        chunk_bytes=chunk_bytes,
        num_chunks=-(-total // chunk_bytes),
        chunk_xxh3=sums,
        checksum=version_checksum(sums),
    )
    return PackedVersion(manifest=manifest, payload=payload, view=view.toreadonly())


def unpack(manifest: WeightsManifest, payload: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors as views of ``payload`` (uint8, manifest.total_bytes long); raises WeightsError on misfit."""
    if payload.dtype != torch.uint8 or payload.numel() != manifest.total_bytes:
        raise WeightsError(
            f"weights version {manifest.version}: payload of {payload.numel()} bytes for a manifest of {manifest.total_bytes}"
        )
    out: dict[str, torch.Tensor] = {}
    for spec in manifest.tensors:
        if spec.name in out:
            raise WeightsError(f"weights version {manifest.version}: tensor {spec.name!r} listed twice")
        dtype = DTYPES[spec.dtype]
        raw = payload[spec.offset : spec.offset + spec.nbytes]
        out[spec.name] = raw.view(dtype).reshape(spec.shape) if spec.nbytes else torch.empty(spec.shape, dtype=dtype)
    return out


def sha256_stream(data: memoryview, hasher: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """Feed ``data`` to ``hasher`` (a new sha256 when None) in GIL-releasing blocks."""
    hasher = hasher or hashlib.sha256()
    for start in range(0, len(data), HASH_BLOCK):
        hasher.update(data[start : start + HASH_BLOCK])
    return hasher


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A canonical digest of a state dict, independent of any transport's layout: over tensors sorted by
    name, sha256 of (name, dtype, shape, raw bytes). Equal digests <=> equal names, dtypes, shapes, bits."""
    hasher = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        header = f"{name}\0{DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))}\0{list(tensor.shape)}\0"
        hasher.update(header.encode())
        if tensor.numel():
            sha256_stream(tensor_bytes(tensor.cpu()), hasher)
    return hasher.hexdigest()
