"""A receiver in its own process for the weights tests: ``python weights_peer.py ID LAST_VERSION TIMEOUT_S
[override ...]`` builds the receiver of the config (``key=value`` overrides), prints one JSON line per version
it gets (version, canonical digest) and exits after LAST_VERSION, or with status 3 on timeout."""

from __future__ import annotations

import json
import sys
import time

from rlef.common.config import load_config
from rlef.common.protocol.transport import Transport
from rlef.common.weights import make_receiver, state_dict_digest


def main() -> int:
    receiver_id, last, timeout_s, overrides = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    config = load_config(None, overrides)
    transport = Transport(config.transport)
    receiver = make_receiver(config, transport, receiver_id)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            got = receiver.poll(timeout_s=0.5)
            if got is None:
                continue
            print(json.dumps({"id": receiver_id, "version": got.version, "digest": state_dict_digest(got.tensors),
                              "path": str(got.path) if got.path else None}), flush=True)
            if got.version >= last:
                return 0
        return 3
    finally:
        receiver.close()
        transport.close()


if __name__ == "__main__":
    sys.exit(main())
