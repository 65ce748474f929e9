"""A relaying zmq weights receiver in its own process for the fan-out tests:
``python relay_peer.py HUB_ENDPOINT ID LAST_VERSION TIMEOUT_S [CHUNK_DELAY_S]``.

Prints one JSON line when it starts relaying (its relay endpoint), one when its first chunk of a version
lands ("mid"), and one per complete version (version, canonical digest, bytes it got from peers, bytes it
relayed); exits 0 after LAST_VERSION, 3 on timeout (peer_loop.receive_until). ``CHUNK_DELAY_S`` slows this
receiver down (a sleep per chunk it takes in), so a test can kill it while it relays."""

from __future__ import annotations

import json
import sys
import time

from peer_loop import receive_until

from rlef.common.config import TransportConfig
from rlef.common.protocol.transport import Transport
from rlef.common.weights.zmq.receiver import ZmqReceiver


def main() -> int:
    hub, receiver_id, last, timeout_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    transport = Transport(TransportConfig())
    receiver = ZmqReceiver(transport, hub, receiver_id, credit=4, poll_interval_s=0.05, relay_bind="tcp://127.0.0.1:0",
                           relay_stall_s=5.0)
    if delay:
        on_chunk = receiver._on_chunk

        def slow(*args, **kwargs):
            time.sleep(delay)
            return on_chunk(*args, **kwargs)

        receiver._on_chunk = slow  # the receiver thread looks the method up on the instance
    print(json.dumps({"id": receiver_id, "relay": receiver.relay_endpoint}), flush=True)
    said_mid = -1

    def say_mid() -> None:
        nonlocal said_mid
        transfer = receiver._transfer
        if transfer is not None and transfer.count > 0 and transfer.manifest.version != said_mid:
            said_mid = transfer.manifest.version
            print(json.dumps({"id": receiver_id, "mid": said_mid}), flush=True)

    # After LAST_VERSION it keeps relaying a little while for peers still behind it in the chain.
    return receive_until(receiver, transport, receiver_id, last, timeout_s, poll_s=0.02, before_poll=say_mid,
                         linger_s=3.0, extra=lambda _got: {"from_peers": receiver.received_from_peers,
                                                           "relayed": receiver.relayed_bytes,
                                                           "switches": receiver.source_switches})


if __name__ == "__main__":
    sys.exit(main())
