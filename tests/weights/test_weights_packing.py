"""The flat payload: layout, sha256 meaning, zero-copy unpacking, the hand-written chunk encoding."""

from __future__ import annotations

import hashlib

import pytest
import torch
from weights_util import state_dict

from rlef.common.errors import WeightsError
from rlef.common.messages import TensorSpec, WeightsChunk, WeightsManifest, decode, encode
from rlef.common.weights import state_dict_digest
from rlef.common.weights.packing import ALIGN, pack, pack_frames, unpack
from rlef.common.weights.zmq_transport import chunk_frame_parts, encode_chunk, parse_chunk


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


def test_manifest_sha256_is_of_the_flat_payload_and_offsets_are_aligned() -> None:
    sd = state_dict(2)
    packed = pack(1, sd, chunk_bytes=64)
    m = packed.manifest
    # Independent reference: rebuild the payload from the specs by hand, then hash it.
    expected = bytearray(m.total_bytes)
    for spec, tensor in zip(m.tensors, sd.values()):
        assert spec.offset % ALIGN == 0
        expected[spec.offset : spec.offset + spec.nbytes] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert bytes(packed.view) == bytes(expected)
    assert m.sha256 == hashlib.sha256(expected).hexdigest()
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


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_hand_written_chunk_encoding_equals_encode(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_chunk(7, 3, memoryview(data))
    assert frame == encode(WeightsChunk(version=7, index=3, data=data))
    assert decode(frame, WeightsChunk).data == data


@pytest.mark.parametrize("version,index", [(0, 0), (127, 128), (70000, 3), (1 << 33, 1 << 20)])
def test_zero_copy_chunk_parser_agrees_with_decode(version: int, index: int) -> None:
    data = bytes(range(200)) * 3
    frame = encode(WeightsChunk(version=version, index=index, data=data))
    parsed = parse_chunk(memoryview(frame))
    assert parsed is not None and parsed[:2] == (version, index) and bytes(parsed[2]) == data


def test_zero_copy_chunk_parser_declines_anything_else() -> None:
    frame = encode(WeightsChunk(version=1, index=2, data=b"abc"))
    assert parse_chunk(memoryview(frame[:-1])) is None  # truncated
    assert parse_chunk(memoryview(frame + b"x")) is None  # trailing bytes
    assert parse_chunk(memoryview(frame.replace(b"weights_chunk", b"weights_chunX"))) is None  # unknown kind
    assert parse_chunk(memoryview(frame.replace(b"weights_chunk/1", b"weights_chunk/2"))) is None
    assert parse_chunk(memoryview(b"\x84")) is None
    other = encode(WeightsManifest(version=1, tensors=[], total_bytes=0, chunk_bytes=1, num_chunks=0, sha256="0" * 64))
    assert parse_chunk(memoryview(other)) is None
    named_data = encode(WeightsManifest(  # a tensor called "data" puts the key's bytes into a manifest
        version=1, tensors=[TensorSpec(name="data", shape=[1], dtype="uint8", offset=0, nbytes=1)],
        total_bytes=1, chunk_bytes=1, num_chunks=1, sha256="0" * 64))
    assert parse_chunk(memoryview(named_data)) is None


def test_framed_packing_carries_the_same_payload_as_flat_packing() -> None:
    sd = state_dict(5, scale=3)
    flat = pack(4, sd, chunk_bytes=100)
    framed = pack_frames(4, sd, 100, lambda i, n: chunk_frame_parts(4, i, n))
    assert framed.manifest == flat.manifest
    assert b"".join(bytes(d) for d in framed.data) == bytes(flat.view)
    for i, frame in enumerate(framed.frames):
        assert bytes(frame) == encode(WeightsChunk(version=4, index=i, data=bytes(flat.chunk(i))))


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
        framed = pack_frames(1, sd, 64, lambda i, n: chunk_frame_parts(1, i, n))
        expected = bytearray(flat.manifest.total_bytes)
        for spec, tensor in zip(flat.manifest.tensors, sd.values()):
            expected[spec.offset : spec.offset + spec.nbytes] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        assert bytes(flat.view) == bytes(expected)
        assert b"".join(bytes(d) for d in framed.data) == bytes(expected)
        assert flat.manifest.sha256 == framed.manifest.sha256 == hashlib.sha256(expected).hexdigest()
        flat.payload.fill_(0xFF)
        for frame in framed.frames:  # dirty the whole region through the writable frames
            frame[:] = b"\xff" * len(frame)
        del flat, framed, frame  # the loop variable would keep the frames region in use
    assert _POOL.reused >= reused + 2
