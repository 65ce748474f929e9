"""The loop the receiver processes of the weights tests share (weights_peer.py, relay_peer.py, each run as
``python tests/weights/<peer>.py ...``, which puts this folder on sys.path): take versions until the last one,
printing a JSON line for each, and exit 0, or 3 on timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from rlef.common.protocol.transport import Transport
from rlef.common.weights import ReceivedWeights, WeightReceiver, state_dict_digest


def receive_until(receiver: WeightReceiver, transport: Transport, receiver_id: str, last: int, timeout_s: float, *,
                  poll_s: float, extra: Callable[[ReceivedWeights], dict], before_poll: Callable[[], None] | None = None,
                  linger_s: float = 0.0) -> int:
    """Poll ``receiver`` (``poll_s`` at a time, ``before_poll()`` before each) and print one JSON line per
    version it gets: id, version, canonical digest and ``extra(got)``. Once it got version ``last`` or later,
    wait ``linger_s`` (a relaying receiver keeps serving the peers behind it) and return 0; return 3 if that
    took more than ``timeout_s``. Closes the receiver and the transport either way."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if before_poll is not None:
                before_poll()
            got = receiver.poll(timeout_s=poll_s)
            if got is None:
                continue
            print(json.dumps({"id": receiver_id, "version": got.version, "digest": state_dict_digest(got.tensors),
                              **extra(got)}), flush=True)
            version = got.version
            del got
            if version >= last:
                end = time.monotonic() + linger_s
                while time.monotonic() < end and time.monotonic() < deadline:
                    time.sleep(0.05)
                return 0
        return 3
    finally:
        receiver.close()
        transport.close()
