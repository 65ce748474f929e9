"""The control channel: register / heartbeat / version / stop, in either start order, with bad input."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import zmq
from weights_util import make_config

from rlef.common.protocol.config_digest import shared_config_digests, to_info
from rlef.common.protocol.config_digest import config_digest
from rlef.common.protocol.control_client import ControlClient, make_control_client
from rlef.common.protocol.control_hub import ControlServer, make_control_server
from rlef.common.errors import TransportError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, encode
from rlef.common.protocol.transport import Transport


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def rebind(start: Callable[[], ControlServer], timeout_s: float = 5.0) -> ControlServer:
    """Start a server on a port another socket just released (ZeroMQ unbinds asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return start()
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_hub_first_register_heartbeat_version_stop(transport: Transport) -> None:
    config = make_config()
    with make_control_server(config, transport, version=5) as hub, \
            make_control_client(config, transport, "actor-0", heartbeat_interval_s=0.05) as client:
        versions: list[int] = []
        client.add_version_listener(versions.append)
        assert client.register(["hf", "gpu:0"], timeout_s=10) == 5
        assert client.hub_config_digest == config_digest(config) == hub.config_digest
        [peer] = hub.peers()
        assert (peer.sender_id, peer.role, peer.capabilities) == ("actor-0", "actor", ["hf", "gpu:0"])
        client.heartbeat(4)
        assert wait_until(lambda: hub.peers()[0].version == 4)
        hub.set_version(6)
        assert wait_until(lambda: client.hub_version == 6)
        assert versions == [5, 6]
        assert not client.stop_requested
        hub.request_stop()
        assert wait_until(lambda: client.stop_requested)


def test_actor_first_registration_waits_for_the_hub(transport: Transport) -> None:
    config = make_config()
    client = make_control_client(config, transport, "early", heartbeat_interval_s=0.05)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(client.register(timeout_s=20)))
    thread.start()
    time.sleep(0.5)  # registrations go out, unanswered, for a while
    assert not client.registered
    with make_control_server(config, transport, version=2) as hub:
        thread.join(timeout=20)
        assert result == [2]
        assert wait_until(lambda: [p.sender_id for p in hub.peers()] == ["early"])
    client.close()


def test_registration_times_out_without_a_hub(transport: Transport) -> None:
    config = make_config()
    with make_control_client(config, transport, "alone") as client:
        with pytest.raises(TransportError, match="did not answer"):
            client.register(timeout_s=0.5)


def test_restarted_hub_learns_peers_from_heartbeats(transport: Transport) -> None:
    config = make_config()
    with make_control_client(config, transport, "survivor", heartbeat_interval_s=0.05) as client:
        with make_control_server(config, transport, version=1):
            client.register(timeout_s=10)
        with rebind(lambda: make_control_server(config, transport, version=9)) as hub2:
            assert wait_until(lambda: [p.sender_id for p in hub2.peers()] == ["survivor"])
            assert wait_until(lambda: client.hub_version == 9)


def test_late_peer_after_stop_is_told_to_stop(transport: Transport) -> None:
    config = make_config()
    with make_control_server(config, transport) as hub:
        hub.request_stop()
        with make_control_client(config, transport, "late") as client:
            client.register(timeout_s=10)
            assert client.stop_requested


def test_version_reaches_several_peers_and_stale_ones_are_listed_apart(transport: Transport) -> None:
    config = make_config()
    with make_control_server(config, transport) as hub:
        clients = [make_control_client(config, transport, f"a{i}", heartbeat_interval_s=0.05) for i in range(3)]
        try:
            for c in clients:
                c.register(timeout_s=10)
            hub.set_version(3)
            assert wait_until(lambda: all(c.hub_version == 3 for c in clients))
            clients[0].close()
            time.sleep(2.0)  # a0 is silent from now on; a1 and a2 heartbeat every 0.05 s
            assert sorted(p.sender_id for p in hub.peers(max_age_s=1.5)) == ["a1", "a2"]
            assert len(hub.peers(max_age_s=60)) == 3
        finally:
            for c in clients:
                c.close()


def test_bad_messages_are_counted_on_both_sides(transport: Transport) -> None:
    config = make_config()
    with make_control_server(config, transport) as hub:
        rogue = transport.client(zmq.DEALER, config.endpoints.learner(config.endpoints.control_port))
        rogue.send(b"garbage")
        rogue.send(encode(Control(op="stop", sender_id="rogue", role="actor")))  # peers may not stop the hub
        rogue.send(encode(Control(op="register", sender_id="rogue", role="actor", info=to_info(shared_config_digests(config)))))
        assert rogue.poll(5000)
        assert decode(rogue.recv(), Control).op == "ack"
        assert hub.bad_messages == 2 and not hub.stop_requested
        rogue.close(0)

    # A fake hub sends junk to a client: counted, the client keeps working.
    config = make_config()
    fake = transport.server(zmq.ROUTER, config.endpoints.bind(config.endpoints.control_port))
    with ControlClient(transport, config.endpoints.learner(config.endpoints.control_port), "c") as client:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(client.register(timeout_s=10)))
        thread.start()
        assert fake.poll(5000)
        identity, _ = fake.recv_multipart()
        fake.send_multipart([identity, b"\x00junk"])
        fake.send_multipart([identity, encode(Control(op="register", sender_id="hub", role="learner"))])
        fake.send_multipart([identity, encode(Control(op="ack", sender_id="hub", role="learner", version=7))])
        thread.join(timeout=10)
        assert result == [7] and client.bad_messages == 2
    fake.close(0)


def test_server_is_usable_as_a_plain_object_on_a_free_port(transport: Transport) -> None:
    hub = ControlServer(transport, "tcp://127.0.0.1:0")
    assert hub.bound_endpoint.startswith("tcp://127.0.0.1:") and not hub.bound_endpoint.endswith(":0")
    with ControlClient(transport, hub.bound_endpoint, "x") as client:
        assert client.register(timeout_s=10) == -1
    assert hub.version == -1 and [p.sender_id for p in hub.peers()] == ["x"]
    hub.set_version(1)
    assert hub.version == 1
    hub.close()
    hub.close()  # idempotent
