"""CURVE on the hub's endpoints (issue 11 item 9): with transport.curve_keys_dir set, a peer without the run's
keys (no keys at all, or a key pair of its own that is not authorised) cannot push rollouts, register or
heartbeat on the control channel, or fetch weights; a peer with the keys, started after it, can. The real
learner Hub (rollout PULL, control ROUTER, weights ROUTER) is the server. Submitting jobs to the broker
without keys: tests/executor/test_executor_failover.py::test_service_over_curve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import zmq
from helpers.executor_service import free_port
from helpers.rollouts import make_rollout

from rlef.common.config import TransportConfig, load_config
from rlef.common.protocol.config_digest import shared_config_digests
from rlef.common.protocol.control_client import ControlClient
from rlef.common.errors import TransportError
from rlef.common.protocol.messages import encode
from rlef.common.protocol.transport import Transport, generate_keys
from rlef.common.weights.zmq.receiver import ZmqReceiver
from rlef.learner.hub import Hub

VOCAB = 1000


@pytest.fixture()
def secure_hub(tmp_path: Path):
    keys = generate_keys(tmp_path / "keys")
    config = load_config(None, [f"endpoints.rollout_port={free_port()}", f"endpoints.control_port={free_port()}",
                                f"endpoints.weights_port={free_port()}", f"transport.curve_keys_dir={keys}",
                                "weights.type=zmq", "weights.poll_interval_s=0.1", f"run.output_dir={tmp_path}"])
    hub = Hub(config, vocab_size=VOCAB, version=0, spool_path=None)
    hub.publish(1, {"w": torch.ones(16)})
    strangers = generate_keys(tmp_path / "stranger-keys")  # a valid key pair the hub never authorised
    transports = {"keyed": Transport(config.transport), "plain": Transport(TransportConfig()),
                  "stranger": Transport(TransportConfig(curve_keys_dir=strangers))}
    try:
        yield config, hub, transports
    finally:
        for t in transports.values():
            t.close()
        hub.close(stop_peers=False)


def _endpoint(config, port: int) -> str:
    return config.endpoints.learner(port)


def test_rollouts_only_from_keyed_peers(secure_hub) -> None:
    config, hub, transports = secure_hub
    sent = {}
    for name in ("plain", "stranger", "keyed"):  # the keyed peer last: its rollout arriving is the precondition
        sock = transports[name].client(zmq.PUSH, _endpoint(config, config.endpoints.rollout_port))
        rollout = make_rollout(VOCAB, seed=len(sent), rollout_id=f"from-{name}")
        sock.send(encode(rollout))
        sent[name] = sock
    got = hub.collect(1, lambda: False)
    assert [r.rollout_id for r in got] == ["from-keyed"]
    hub._drain(500)  # anything else that made it through would be here now
    assert len(hub.buffer) == 0 and "from-plain" not in hub.buffer.consumed and "from-stranger" not in hub.buffer.consumed
    for sock in sent.values():
        sock.close(0)


def test_control_only_from_keyed_peers(secure_hub) -> None:
    config, hub, transports = secure_hub
    endpoint = _endpoint(config, config.endpoints.control_port)
    digests = shared_config_digests(config)  # the intruders send the right ones too: only CURVE stops them
    for name in ("plain", "stranger"):
        with ControlClient(transports[name], endpoint, f"intruder-{name}", heartbeat_interval_s=0.1,
                           config_digests=digests) as intruder:
            with pytest.raises(TransportError, match="did not answer"):
                intruder.register(["rollouts"], timeout_s=2.0)
    with ControlClient(transports["keyed"], endpoint, "actor-0", heartbeat_interval_s=0.1, config_digests=digests) as actor:
        assert actor.register(["rollouts"], timeout_s=30.0) == 1
    assert [p.sender_id for p in hub.control.peers()] == ["actor-0"]


def test_weights_only_to_keyed_peers(secure_hub) -> None:
    config, hub, transports = secure_hub
    endpoint = _endpoint(config, config.endpoints.weights_port)
    intruders = [ZmqReceiver(transports[name], endpoint, f"intruder-{name}", poll_interval_s=0.1) for name in ("plain", "stranger")]
    keyed = ZmqReceiver(transports["keyed"], endpoint, "actor-0", poll_interval_s=0.1)
    try:
        received = keyed.poll(60.0)
        assert received is not None and received.version == 1
        # The intruders started first and had at least the keyed peer's handshake, get and whole transfer.
        assert [r.poll(0) for r in intruders] == [None, None] and [r.hub_version for r in intruders] == [-1, -1]
    finally:
        for r in [*intruders, keyed]:
            r.close()
