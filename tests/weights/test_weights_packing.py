"""The flat payload: layout, per-chunk xxh3 checksums, zero-copy unpacking, the two-frame chunk encoding."""

from __future__ import annotations

import struct

import pytest
import torch
import xxhash
from weights_util import state_dict

from rlef.common.errors import WeightsError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import WeightsChunk, WeightsManifest, encode
from rlef.common.weights import state_dict_digest
from rlef.common.weights.packing import ALIGN, first_bad_chunk, pack, unpack
from rlef.common.weights.zmq.wire import encode_chunk


def test_pack_unpack_round_trip_every_dtype() -> None:
    sd = state_dict(1)
    packed = pack(5, sd, chunk_bytes=100)
    manifest = decode(encode(packed.manifest), WeightsManifest)  # the manifest survives the wire validation
    out = unpack(manifest, packed.payload.clone())
    assert list(out) == list(sd)
    for name, tensor in sd.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape, name
        assert torch.equal(out[name], tensor), name
    assert state_dict_digest(out) == state_dict_digest(sd)


def _xxh3_of_chunks(payload: bytes, size: int) -> bytes:
    """Independent reference: the xxh3-64 of every ``size`` slice, little-endian uint64s."""
    return b"".join(struct.pack("<Q", xxhash.xxh3_64_intdigest(payload[i : i + size])) for i in range(0, len(payload), size))


def test_manifest_checksums_are_of_the_flat_payload_and_offsets_are_aligned() -> None:
    sd = state_dict(2)
    packed = pack(1, sd, chunk_bytes=64)
    m = packed.manifest
    # Independent reference: rebuild the payload from the specs by hand, then hash it.
    expected = bytearray(m.total_bytes)
    for spec, tensor in zip(m.tensors, sd.values()):
        assert spec.offset % ALIGN == 0
        expected[spec.offset : spec.offset + spec.nbytes] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert bytes(packed.view) == bytes(expected)
    assert m.chunk_xxh3 == _xxh3_of_chunks(bytes(expected), 64)
    assert m.checksum == xxhash.xxh3_64_hexdigest(m.chunk_xxh3)
    assert m.num_chunks == -(-m.total_bytes // 64)
    assert b"".join(bytes(packed.chunk(i)) for i in range(m.num_chunks)) == bytes(expected)


def test_digest_sees_one_flipped_bit_and_a_renamed_tensor() -> None:
    sd = state_dict(3)
    base = state_dict_digest(sd)
    flipped = dict(sd)
    w = sd["model.norm.weight"].clone()
    w.view(torch.int32)[3] ^= 1
    flipped["model.norm.weight"] = w
    assert state_dict_digest(flipped) != base
    renamed = {("x." + k if k == "step" else k): v for k, v in sd.items()}
    assert state_dict_digest(renamed) != base


def test_unpack_rejects_a_payload_of_the_wrong_size() -> None:
    packed = pack(1, state_dict(4), chunk_bytes=64)
    with pytest.raises(WeightsError, match="payload"):
        unpack(packed.manifest, packed.payload[:-1])


def test_pack_rejects_non_cpu_or_unsupported_tensors() -> None:
    with pytest.raises(WeightsError, match="dtype"):
        pack(1, {"c": torch.zeros(2, dtype=torch.complex64)}, 64)
    with pytest.raises(WeightsError, match="not a tensor"):
        pack(1, {"x": [1.0]}, 64)  # type: ignore[dict-item]


@pytest.mark.parametrize("size", [0, 1, 255, 70000])
def test_a_chunk_is_a_header_frame_then_its_bytes(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    header, body = encode_chunk(7, 3, memoryview(data))
    assert decode(header, WeightsChunk) == WeightsChunk(version=7, index=3)
    assert bytes(body) == data and len(header) < 64  # the header does not grow with the chunk


def test_one_flipped_bit_is_found_in_its_chunk() -> None:
    packed = pack(1, state_dict(9, scale=4), chunk_bytes=256)
    view = memoryview(bytearray(packed.view))
    assert first_bad_chunk(packed.manifest, view) is None
    view[256 * 3 + 17] ^= 4
    assert first_bad_chunk(packed.manifest, view) == 3


def test_recycled_buffers_are_reused_only_when_every_view_is_gone() -> None:
    from rlef.common.weights.packing import _RegionPool

    pool = _RegionPool(keep=2)
    first = pool.tensor(1 << 16)
    view = first[100:200].view(torch.int32)
    del first
    second = pool.tensor(1 << 16)  # ``view`` still uses the first region: a new one is mapped
    assert pool.reused == 0 and second.data_ptr() != view.data_ptr() - 100
    del view
    third = pool.tensor(1 << 16)
    assert pool.reused == 1
    assert third.data_ptr() != second.data_ptr()  # the region in use is never handed out twice


def test_packing_into_a_dirty_recycled_buffer_still_zeroes_the_padding() -> None:
    from rlef.common.weights.packing import _POOL

    sd = state_dict(6)
    reused = _POOL.reused
    for _ in range(3):  # later rounds reuse the earlier rounds' (dirtied) regions
        flat = pack(1, sd, chunk_bytes=64)
        expected = bytearray(flat.manifest.total_bytes)
        for spec, tensor in zip(flat.manifest.tensors, sd.values()):
            expected[spec.offset : spec.offset + spec.nbytes] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        assert bytes(flat.view) == bytes(expected)
        assert flat.manifest.chunk_xxh3 == _xxh3_of_chunks(bytes(expected), 64)
        flat.payload.fill_(0xFF)  # dirty the whole region before it is recycled
        del flat
    assert _POOL.reused >= reused + 2
