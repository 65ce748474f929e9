"""What both ends of the zmq weights channel share (the protocol: :mod:`rlef.common.weights.zmq`): the
transport's name, the frames of one chunk, and the non-blocking send of a ROUTER's reply."""

from __future__ import annotations

import logging

import zmq

from rlef.common.protocol.messages import WeightsChunk, encode

log = logging.getLogger(__name__)

NAME = "zmq"
POLL_MS = 50
ZERO_COPY_BYTES = 64 << 10  # a message with a frame at least this large is sent without a copy


def encode_chunk(version: int, index: int, data: memoryview | bytes) -> list[bytes | memoryview]:
    """The frames of one chunk on the wire: the WeightsChunk header, then the chunk's bytes."""
    return [encode(WeightsChunk(version=version, index=index)), data]


def send_frames(sock: zmq.Socket, identity: bytes, frames: list, what: str) -> bool:
    try:
        # NOBLOCK: a peer that asks without reading (past the HWM) must not stall everybody else; its
        # request is dropped and its stall timer makes it start over.
        sock.send_multipart([identity, *frames], zmq.NOBLOCK,
                            copy=all(len(f) < ZERO_COPY_BYTES for f in frames))
        return True
    except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer went away (ROUTER_MANDATORY); EAGAIN: HWM
        log.info("%s: cannot reach %r: %s", what, identity[:64], exc)
        return False
