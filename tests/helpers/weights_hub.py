"""A hand-driven weights hub for tests of any role: a real ROUTER speaking the zmq weights protocol, whose
chunk replies the test scripts (to corrupt, drop or delay them)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, WeightsRequest, encode
from rlef.common.protocol.transport import Transport
from rlef.common.weights.packing import PackedVersion

ChunkReply = Callable[[int, int, bytes], "bytes | list | None"]


class ScriptedHub:
    """Answers ``get`` with the manifest of ``packed`` (or an ack once the receiver holds it) and ``fetch``
    through ``chunk_reply(version, index, data) -> frame(s) | None`` (a list is sent as one multipart
    message, e.g. ``encode_chunk``'s header + bytes; None: no answer)."""

    def __init__(self, transport: Transport, endpoint: str, packed: PackedVersion, chunk_reply: ChunkReply):
        self.sock = transport.server(zmq.ROUTER, endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.packed = packed
        self.manifest_frame = encode(packed.manifest)
        self.chunk_reply = chunk_reply
        self.gets: list[int] = []
        self.fetches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version = self.packed.manifest.version
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, frame = self.sock.recv_multipart()
            request = decode(frame, WeightsRequest)
            if request.op == "get":
                self.gets.append(request.version)
                reply = self.manifest_frame if request.version < version else encode(
                    Control(op="ack", sender_id="hub", role="learner", version=version))
            else:
                self.fetches += 1
                reply = self.chunk_reply(request.version, request.index, bytes(self.packed.chunk(request.index)))
            if reply is not None:
                self.sock.send_multipart([identity, *(reply if isinstance(reply, list) else [reply])])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(0)
