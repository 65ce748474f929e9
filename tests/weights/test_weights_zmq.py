"""The zmq weights transport on loopback with real sockets, threads and processes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import zmq
from helpers.weights_hub import ScriptedHub
from weights_util import PEER, publish_and_receive, python, state_dict, zmq_config

from rlef.common.config import RlefConfig
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, WeightsChunk, WeightsManifest, WeightsRequest, WeightsSource, encode
from rlef.common.protocol.transport import Transport, generate_keys
from rlef.common.weights import make_publisher, make_receiver, state_dict_digest
from rlef.common.weights.packing import pack
from rlef.common.weights.zmq.hub import ZmqPublisher
from rlef.common.weights.zmq.receiver import ZmqReceiver
from rlef.common.weights.zmq.wire import encode_chunk
from rlef.monitoring import metrics_weights as M


def _overrides(config: RlefConfig) -> list[str]:
    w = config.weights
    return [f"endpoints.weights_port={config.endpoints.weights_port}", "weights.type=zmq",
            f"weights.chunk_bytes={w.chunk_bytes}", f"weights.credit={w.credit}", f"weights.poll_interval_s={w.poll_interval_s}"]


def test_receiver_gets_each_version_whole_and_equal(transport: Transport) -> None:
    config = zmq_config()
    with make_publisher(config, transport) as pub, make_receiver(config, transport, "actor-0") as rec:
        assert rec.version == -1 and rec.poll() is None
        for version in (1, 2, 3):
            publish_and_receive(pub, rec, version)
            assert rec.version == version
        assert rec.poll() is None  # each version is handed out once
        assert isinstance(pub, ZmqPublisher) and pub.receivers() == 1


@pytest.mark.slow
def test_two_receiver_processes_get_identical_tensors(transport: Transport) -> None:
    config = zmq_config()
    with make_publisher(config, transport) as pub:
        procs = [subprocess.Popen([python(), str(PEER), f"actor-{i}", "2", "60", *_overrides(config)],
                                  stdout=subprocess.PIPE, text=True) for i in range(2)]
        sds = {v: state_dict(10 + v, scale=50) for v in (1, 2)}  # ~120 KB: many chunks of 4 KiB
        pub.publish(1, sds[1])
        time.sleep(0.5)
        pub.publish(2, sds[2])
        outs = [p.communicate(timeout=90)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["version"] == 2
        for line in lines:  # whatever versions a receiver saw, each equals the learner's full state dict
            assert line["digest"] == state_dict_digest(sds[line["version"]])


def test_late_joiner_gets_the_current_version_only(transport: Transport) -> None:
    config = zmq_config()
    with make_publisher(config, transport) as pub:
        pub.publish(1, state_dict(1))
        pub.publish(4, state_dict(4))
        with make_receiver(config, transport, "late") as rec:
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 4
            assert state_dict_digest(got.tensors) == state_dict_digest(state_dict(4))
            assert rec.poll(timeout_s=0.3) is None


def _dealer(transport: Transport, config: RlefConfig) -> zmq.Socket:
    return transport.client(zmq.DEALER, config.endpoints.learner(config.endpoints.weights_port))


def _ask(sock: zmq.Socket, **fields: object) -> object:
    """The hub's answer; a chunk comes back with its bytes (the frame after its header) put in ``data``.
    A WeightsSource sent ahead of a manifest is skipped."""
    sock.send(encode(WeightsRequest(receiver_id="probe", **fields)))
    while True:
        assert sock.poll(5000), "hub did not answer"
        frames = sock.recv_multipart()
        message = decode(frames[0])
        if isinstance(message, WeightsSource):
            continue
        if isinstance(message, WeightsChunk):
            assert len(frames) == 2 and message.data == b""  # the bytes travel as their own frame
            return message.replace(data=frames[1])
        return message


def test_hub_answers_a_fetch_of_a_superseded_version_with_the_new_manifest(transport: Transport) -> None:
    config = zmq_config()
    with make_publisher(config, transport) as pub:
        sock = _dealer(transport, config)
        answer = _ask(sock, op="get", version=-1)
        assert isinstance(answer, Control) and answer.op == "ack" and answer.version == -1
        pub.publish(1, state_dict(1, scale=20))
        manifest = _ask(sock, op="get", version=-1)
        assert isinstance(manifest, WeightsManifest) and manifest.version == 1 and manifest.num_chunks > 2
        chunk = _ask(sock, op="fetch", version=1, index=1)
        assert chunk.index == 1 and len(chunk.data) == manifest.chunk_bytes
        pub.publish(2, state_dict(2, scale=20))
        superseding = _ask(sock, op="fetch", version=1, index=2)
        assert isinstance(superseding, WeightsManifest) and superseding.version == 2
        up_to_date = _ask(sock, op="get", version=2)
        assert isinstance(up_to_date, Control) and up_to_date.version == 2
        sock.close(0)


def test_a_relay_endpoint_nobody_can_connect_to_does_not_kill_the_next_receiver(transport: Transport) -> None:
    """Found by fuzzing the hub (tests/learner/test_learner_fuzz.py): one ``get`` whose relay endpoint ZeroMQ
    cannot connect to put it first in the chain, and the next relaying receiver, told to fetch from it, died
    in its connect (TransportError in its thread: no weights ever again). Endpoints that are not
    ``tcp://host:port`` no longer decode; one that is but still cannot be connected to (``tcp://..:5``) makes
    the receiver fetch from the hub and report it dead, which drops it from the chain."""
    config = zmq_config()
    with make_publisher(config, transport) as pub:
        pub.publish(1, state_dict(1))
        poisoner = _dealer(transport, config)
        assert isinstance(_ask(poisoner, op="get", version=-1, relay="tcp://..:5"), WeightsManifest)
        assert pub.chain() == ["tcp://..:5"]
        rec = ZmqReceiver(transport, config.endpoints.learner(config.endpoints.weights_port), "actor-0",
                          poll_interval_s=0.05, relay_bind="tcp://127.0.0.1:0")
        try:
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 1 and state_dict_digest(got.tensors) == state_dict_digest(state_dict(1))
            assert rec.bad_messages == 1
            deadline = time.monotonic() + 10
            while "tcp://..:5" in pub.chain() and time.monotonic() < deadline:  # reported with the next get
                time.sleep(0.05)
            assert pub.chain() == [rec.relay_endpoint]
        finally:
            rec.close()
            poisoner.close(0)


def test_hub_counts_bad_messages_and_keeps_serving(transport: Transport) -> None:
    config = zmq_config()
    with make_publisher(config, transport) as pub:
        assert isinstance(pub, ZmqPublisher)
        before = M.HUB_BAD_MESSAGES.labels("zmq")._value.get()
        sock = _dealer(transport, config)
        sock.send(b"\xc1 not msgpack")
        sock.send(encode(Control(op="heartbeat", sender_id="x", role="actor")))  # right format, wrong channel
        pub.publish(1, state_dict(1))
        assert isinstance(_ask(sock, op="get", version=-1), WeightsManifest)
        assert pub.bad_messages == 2
        assert M.HUB_BAD_MESSAGES.labels("zmq")._value.get() == before + 2
        sock.close(0)


def test_corrupt_chunk_is_never_applied_counted_and_rerequested(transport: Transport) -> None:
    config = zmq_config()
    sd = state_dict(7, scale=10)
    packed = pack(3, sd, config.weights.chunk_bytes)
    corrupted: list[int] = []

    def reply(version: int, index: int, data: bytes) -> bytes:
        if index == 2 and not corrupted:  # the first transfer gets one flipped bit in chunk 2
            corrupted.append(index)
            data = bytes([data[0] ^ 1]) + data[1:]
        return encode_chunk(version, index, data)

    before = M.CHECKSUM_FAILURES.labels("zmq")._value.get()
    hub = ScriptedHub(transport, config.endpoints.bind(config.endpoints.weights_port), packed, reply)
    try:
        with make_receiver(config, transport, "victim") as rec:
            assert isinstance(rec, ZmqReceiver)
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 3
            assert state_dict_digest(got.tensors) == state_dict_digest(sd)  # only the good copy was handed out
            assert rec.poll(timeout_s=0.3) is None
            assert rec.checksum_failures == 1
            assert M.CHECKSUM_FAILURES.labels("zmq")._value.get() == before + 1
            assert hub.gets[:2] == [-1, -1]  # asked for the version again after the mismatch
            # The bad chunk is caught when it lands (per-chunk checksums): the first attempt stops early,
            # the second fetches every chunk.
            assert packed.manifest.num_chunks < hub.fetches <= 2 * packed.manifest.num_chunks
    finally:
        hub.close()


def test_a_persistently_corrupt_hub_never_gets_a_version_applied(transport: Transport) -> None:
    config = zmq_config()
    packed = pack(1, state_dict(8), config.weights.chunk_bytes)
    hub = ScriptedHub(transport, config.endpoints.bind(config.endpoints.weights_port), packed, lambda v, i, d: encode_chunk(v, i, d[:-1] + bytes([d[-1] ^ 255])))
    try:
        with make_receiver(config, transport, "victim") as rec:
            assert isinstance(rec, ZmqReceiver)
            deadline = time.monotonic() + 20
            while rec.checksum_failures < 3 and time.monotonic() < deadline:
                assert rec.poll(timeout_s=0.1) is None
            assert rec.checksum_failures >= 3  # re-requested (with back-off) and failed again each time
            assert rec.poll() is None and rec.version == -1
    finally:
        hub.close()


def test_receiver_follows_a_superseding_manifest_mid_transfer(transport: Transport) -> None:
    config = zmq_config()
    old = pack(1, state_dict(1, scale=10), config.weights.chunk_bytes)
    new_sd = state_dict(2, scale=10)
    new = pack(2, new_sd, config.weights.chunk_bytes)
    new_frame = encode(new.manifest)

    def reply(version: int, index: int, data: bytes) -> bytes | None:
        if version == 1:  # mid-transfer of version 1 the hub has moved on to version 2
            return encode_chunk(1, index, data) if index < 2 else new_frame
        return encode_chunk(2, index, bytes(new.chunk(index)))

    hub = ScriptedHub(transport, config.endpoints.bind(config.endpoints.weights_port), old, reply)
    try:
        with make_receiver(config, transport, "follower") as rec:
            assert isinstance(rec, ZmqReceiver)
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 2
            assert state_dict_digest(got.tensors) == state_dict_digest(new_sd)
            assert rec.restarts >= 1 and rec.checksum_failures == 0
    finally:
        hub.close()


def test_receiver_started_before_the_hub_catches_up(transport: Transport) -> None:
    config = zmq_config()
    with make_receiver(config, transport, "early") as rec:
        time.sleep(0.3)
        with make_publisher(config, transport) as pub:
            pub.publish(1, state_dict(1))
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 1


def test_curve_on_authorised_receiver_gets_weights_and_keyless_one_nothing(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    config = zmq_config(f"transport.curve_keys_dir={keys}")
    secure = Transport(config.transport)
    plain = Transport(zmq_config().transport)
    try:
        assert secure.secure
        with make_publisher(config, secure) as pub, make_receiver(config, secure, "ok") as rec, \
                ZmqReceiver(plain, config.endpoints.learner(config.endpoints.weights_port), "intruder") as intruder:
            pub.publish(1, state_dict(1))
            got = rec.poll(timeout_s=20)
            assert got is not None and state_dict_digest(got.tensors) == state_dict_digest(state_dict(1))
            assert intruder.poll(timeout_s=1.0) is None
            assert intruder.hub_version == -1
    finally:
        secure.close()
        plain.close()


def test_publish_rejects_a_version_that_does_not_increase(transport: Transport) -> None:
    from rlef.common.errors import WeightsError

    config = zmq_config()
    with make_publisher(config, transport) as pub:
        pub.publish(2, {"w": torch.zeros(3)})
        with pytest.raises(WeightsError, match="must increase"):
            pub.publish(2, {"w": torch.zeros(3)})


def test_a_manifest_too_large_to_allocate_is_dropped_and_the_receiver_survives(transport: Transport) -> None:
    config = zmq_config()
    sock = transport.server(zmq.ROUTER, config.endpoints.bind(config.endpoints.weights_port))
    from rlef.common.weights.packing import version_checksum

    sums = bytes(8 << 20)
    huge = WeightsManifest(version=1, tensors=[], total_bytes=1 << 40, chunk_bytes=1 << 20, num_chunks=1 << 20,
                           chunk_xxh3=sums, checksum=version_checksum(sums))
    try:
        with ZmqReceiver(transport, config.endpoints.learner(config.endpoints.weights_port), "r",
                         poll_interval_s=0.05) as rec:
            assert sock.poll(5000)
            identity, _ = sock.recv_multipart()
            sock.send_multipart([identity, encode(huge)])
            deadline = time.monotonic() + 10
            while rec.bad_messages == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rec.bad_messages == 1 and rec.poll() is None
            assert rec._thread.is_alive()
    finally:
        sock.close(0)


def test_control_version_message_makes_an_idle_receiver_fetch_at_once(transport: Transport) -> None:
    from rlef.common.protocol.control_client import make_control_client
    from rlef.common.protocol.control_hub import make_control_server

    config = zmq_config("weights.poll_interval_s=3600")  # it would never ask again by itself
    with make_publisher(config, transport) as pub, make_control_server(config, transport) as hub, \
            make_receiver(config, transport, "a0") as rec, make_control_client(config, transport, "a0") as control:
        control.add_version_listener(rec.notify)
        control.register(timeout_s=10)
        pub.publish(1, state_dict(1))
        hub.set_version(1)
        got = rec.poll(timeout_s=20)
        assert got is not None and got.version == 1
        pub.publish(2, state_dict(2))
        hub.set_version(2)
        got = rec.poll(timeout_s=20)
        assert got is not None and got.version == 2


def test_publisher_on_a_free_port_reports_where_to_connect(transport: Transport) -> None:
    with ZmqPublisher(transport, "tcp://127.0.0.1:0", chunk_bytes=1024) as pub:
        assert not pub.bound_endpoint.endswith(":0")
        with ZmqReceiver(transport, pub.bound_endpoint, "r", poll_interval_s=0.05) as rec:
            pub.publish(0, state_dict(0))
            got = rec.poll(timeout_s=20)
            assert got is not None and got.version == 0
