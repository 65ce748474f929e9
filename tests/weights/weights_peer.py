"""A receiver in its own process for the weights tests: ``python weights_peer.py ID LAST_VERSION TIMEOUT_S
[override ...]`` builds the receiver of the config (``key=value`` overrides), prints one JSON line per version
it gets (version, canonical digest, path) and exits after LAST_VERSION, or with status 3 on timeout
(peer_loop.receive_until)."""

from __future__ import annotations

import sys

from peer_loop import receive_until

from rlef.common.config import load_config
from rlef.common.protocol.transport import Transport
from rlef.common.weights import make_receiver


def main() -> int:
    receiver_id, last, timeout_s, overrides = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    config = load_config(None, overrides)
    transport = Transport(config.transport)
    receiver = make_receiver(config, transport, receiver_id)
    return receive_until(receiver, transport, receiver_id, last, timeout_s, poll_s=0.5,
                         extra=lambda got: {"path": str(got.path) if got.path else None})


if __name__ == "__main__":
    sys.exit(main())
