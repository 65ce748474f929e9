"""ZeroMQ transport (rlef.common.protocol.transport) on real loopback sockets: socket options, CURVE with the right
keys, and peers without keys or with an unauthorised key pair getting nothing through in either direction.

"Nothing got through" is observed over a window (NOTHING_MS) that is far longer than a loopback CURVE
handshake; every such test then shows, on the same sockets, that an authorised peer does get through, so a
test whose attacker was merely slow (or whose server was deaf) fails instead of passing vacuously.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from rlef.common.config import TransportConfig
from rlef.common.errors import TransportError
from rlef.common.protocol.transport import AUTHORIZED_DIR, Transport, bound_port, generate_keys

LOOPBACK = "tcp://127.0.0.1:0"
NOTHING_MS = 1000
DELIVER_MS = 10_000
RLEF = Path(sys.executable).with_name("rlef")


def endpoint(sock: zmq.Socket) -> str:
    return f"tcp://127.0.0.1:{bound_port(sock)}"


def received(sock: zmq.Socket, timeout_ms: int) -> list[list[bytes]]:
    """Every multipart message that arrives on ``sock`` within ``timeout_ms`` (stops at the first quiet poll)."""
    out = []
    while sock.poll(timeout_ms, zmq.POLLIN):
        out.append(sock.recv_multipart())
        timeout_ms = 50
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_keys(tmp_path_factory.mktemp("curve"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, valid key set of another deployment: its client key is not authorised by ``keys``."""
    return generate_keys(tmp_path_factory.mktemp("curve-other"))


@pytest.fixture
def secure(keys: Path):
    with Transport(TransportConfig(curve_keys_dir=keys)) as transport:
        yield transport


@pytest.fixture
def plain():
    with Transport(TransportConfig()) as transport:
        yield transport


def rogue_client(context: zmq.Context, socket_type: int, server_public: bytes, identity: bytes | None = None) -> zmq.Socket:
    """A raw socket that knows the real server public key but holds its own, unauthorised client key pair."""
    public, secret = zmq.curve_keypair()
    sock = context.socket(socket_type)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    if identity is not None:
        sock.identity = identity
    return sock


def server_public_key(keys: Path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    return public


# ---------------------------------------------------------------- options


def test_socket_options_applied() -> None:
    config = TransportConfig(sndhwm=123, rcvhwm=456, linger_ms=7, reconnect_ivl_ms=11, reconnect_ivl_max_ms=2222,
                             max_message_bytes=4096)
    with Transport(config) as transport:
        server = transport.server(zmq.PULL, LOOPBACK, rcvtimeo=250)
        client = transport.client(zmq.DEALER, endpoint(server), identity=b"actor-3", sndtimeo=300)
        for sock in (server, client):
            assert sock.getsockopt(zmq.SNDHWM) == 123
            assert sock.getsockopt(zmq.RCVHWM) == 456
            assert sock.getsockopt(zmq.LINGER) == 7
            assert sock.getsockopt(zmq.RECONNECT_IVL) == 11
            assert sock.getsockopt(zmq.RECONNECT_IVL_MAX) == 2222
            assert sock.getsockopt(zmq.MAXMSGSIZE) == 4096
            assert sock.getsockopt(zmq.CURVE_SERVER) == 0
        assert server.getsockopt(zmq.RCVTIMEO) == 250  # per-socket extras by lower-case option name
        assert client.getsockopt(zmq.SNDTIMEO) == 300
        assert client.getsockopt(zmq.IDENTITY) == b"actor-3"
        assert bound_port(server) > 0
        assert not transport.secure


def test_frames_over_max_message_bytes_never_arrive() -> None:
    with Transport(TransportConfig(max_message_bytes=1024)) as transport:
        server = transport.server(zmq.PULL, LOOPBACK)
        with Transport(TransportConfig()) as sender_side:
            big = sender_side.client(zmq.PUSH, endpoint(server))
            big.send(b"x" * 2048)
            assert received(server, NOTHING_MS) == []
            small = sender_side.client(zmq.PUSH, endpoint(server))
            small.send(b"y" * 1024)
            assert received(server, DELIVER_MS) == [[b"y" * 1024]]


@pytest.mark.parametrize("option", [{"no_such_option": 1}, {"rcvtimeo": "soon"}, {"linger": None}])
def test_bad_extra_option_is_a_transport_error(plain: Transport, option: dict) -> None:
    name = next(iter(option))
    with pytest.raises(TransportError, match=f"option {name}="):
        plain.server(zmq.PULL, LOOPBACK, **option)
    with pytest.raises(TransportError, match=f"option {name}="):
        plain.client(zmq.PUSH, "tcp://127.0.0.1:9", **option)


def bind_when_free(transport: Transport, address: str) -> zmq.Socket:
    """Bind ``address`` again once ZeroMQ's I/O thread has released it (closing a socket is asynchronous)."""
    deadline = time.monotonic() + DELIVER_MS / 1000
    while True:
        try:
            return transport.server(zmq.PULL, address)
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_client_reconnects_to_a_restarted_server(keys: Path) -> None:
    # A hub restarting on the same port: the connected client's later messages reach the new server
    # without any action by the client (ZeroMQ reconnects every reconnect_ivl_ms, backing off).
    with Transport(TransportConfig(curve_keys_dir=keys, reconnect_ivl_ms=20, reconnect_ivl_max_ms=200)) as transport:
        first = transport.server(zmq.PULL, LOOPBACK)
        address = endpoint(first)
        push = transport.client(zmq.PUSH, address)
        push.send(b"before")
        assert received(first, DELIVER_MS) == [[b"before"]]
        first.close(linger=0)
        second = bind_when_free(transport, address)
        # Frames sent before the client notices the old connection died go down with it (ZeroMQ keeps no
        # per-message delivery guarantee: rollout accounting is by rollout_id), so keep sending until the
        # reconnected pipe carries one.
        for attempt in range(DELIVER_MS // 100):
            push.send(b"after %d" % attempt)
            got = received(second, 100)
            if got:
                break
        assert got and got[0][0].startswith(b"after ")


def test_router_mandatory_raises_on_unroutable_reply(plain: Transport) -> None:
    router = plain.server(zmq.ROUTER, LOOPBACK)
    with pytest.raises(zmq.ZMQError) as info:
        router.send_multipart([b"nobody", b"reply"])
    assert info.value.errno == zmq.EHOSTUNREACH


def test_bind_failure_is_a_transport_error(plain: Transport) -> None:
    first = plain.server(zmq.PULL, LOOPBACK)
    taken = endpoint(first)
    with pytest.raises(TransportError, match=taken.replace(".", r"\.")):
        plain.server(zmq.PULL, taken)


def test_plain_push_pull_and_dealer_router(plain: Transport) -> None:
    pull = plain.server(zmq.PULL, LOOPBACK)
    push = plain.client(zmq.PUSH, endpoint(pull))  # keep a reference: linger=0 drops a collected socket's queue
    push.send(b"rollout")
    assert received(pull, DELIVER_MS) == [[b"rollout"]]
    router = plain.server(zmq.ROUTER, LOOPBACK)
    dealer = plain.client(zmq.DEALER, endpoint(router), identity=b"d1")
    dealer.send(b"job")
    assert received(router, DELIVER_MS) == [[b"d1", b"job"]]
    router.send_multipart([b"d1", b"result"])
    assert received(dealer, DELIVER_MS) == [[b"result"]]


# ---------------------------------------------------------------- CURVE


def test_curve_push_pull_and_dealer_router(secure: Transport) -> None:
    assert secure.secure
    pull = secure.server(zmq.PULL, LOOPBACK)
    assert pull.getsockopt(zmq.CURVE_SERVER) == 1
    push = secure.client(zmq.PUSH, endpoint(pull))
    for index in range(3):
        push.send(b"rollout %d" % index)
    assert received(pull, DELIVER_MS) == [[b"rollout 0"], [b"rollout 1"], [b"rollout 2"]]
    router = secure.server(zmq.ROUTER, LOOPBACK)
    dealer = secure.client(zmq.DEALER, endpoint(router), identity=b"actor-0")
    dealer.send_multipart([b"", b"job"])
    assert received(router, DELIVER_MS) == [[b"actor-0", b"", b"job"]]
    router.send_multipart([b"actor-0", b"", b"result"])
    assert received(dealer, DELIVER_MS) == [[b"", b"result"]]


def test_curve_between_two_processes_sharing_only_the_key_dir(keys: Path) -> None:
    # Each role builds its own Transport from the same directory: that is how a deployment works.
    with Transport(TransportConfig(curve_keys_dir=keys)) as hub, Transport(TransportConfig(curve_keys_dir=keys)) as actor:
        pull = hub.server(zmq.PULL, LOOPBACK)
        push = actor.client(zmq.PUSH, endpoint(pull))
        push.send(b"hello")
        assert received(pull, DELIVER_MS) == [[b"hello"]]


def test_plain_peer_gets_nothing_into_a_curve_pull(secure: Transport, plain: Transport) -> None:
    pull = secure.server(zmq.PULL, LOOPBACK)
    intruder = plain.client(zmq.PUSH, endpoint(pull))
    intruder.send(b"intruder")
    assert received(pull, NOTHING_MS) == []
    friend = secure.client(zmq.PUSH, endpoint(pull))
    friend.send(b"friend")
    assert received(pull, DELIVER_MS) == [[b"friend"]]


def test_unauthorised_key_pair_gets_nothing_into_a_curve_pull(secure: Transport, keys: Path) -> None:
    pull = secure.server(zmq.PULL, LOOPBACK)
    rogue = rogue_client(secure.context, zmq.PUSH, server_public_key(keys))
    rogue.connect(endpoint(pull))
    rogue.send(b"intruder")
    assert received(pull, NOTHING_MS) == []
    friend = secure.client(zmq.PUSH, endpoint(pull))
    friend.send(b"friend")
    assert received(pull, DELIVER_MS) == [[b"friend"]]


def test_other_deployments_keys_get_nothing_into_a_curve_router(secure: Transport, other_keys: Path) -> None:
    router = secure.server(zmq.ROUTER, LOOPBACK)
    with Transport(TransportConfig(curve_keys_dir=other_keys)) as stranger:
        dealer = stranger.client(zmq.DEALER, endpoint(router), identity=b"stranger")
        dealer.send(b"job")
        assert received(router, NOTHING_MS) == []
        # ... and the router cannot reach it either: it never completed a handshake, so it has no route.
        with pytest.raises(zmq.ZMQError) as info:
            router.send_multipart([b"stranger", b"result"])
        assert info.value.errno == zmq.EHOSTUNREACH
    friend = secure.client(zmq.DEALER, endpoint(router), identity=b"friend")
    friend.send(b"job")
    assert received(router, DELIVER_MS) == [[b"friend", b"job"]]


def test_unauthorised_and_plain_dealers_get_nothing_into_a_curve_router(secure: Transport, plain: Transport, keys: Path) -> None:
    router = secure.server(zmq.ROUTER, LOOPBACK)
    rogue = rogue_client(secure.context, zmq.DEALER, server_public_key(keys), identity=b"rogue")
    rogue.connect(endpoint(router))
    rogue.send(b"job")
    plain_dealer = plain.client(zmq.DEALER, endpoint(router), identity=b"plain")
    plain_dealer.send(b"job")
    assert received(router, NOTHING_MS) == []
    for identity in (b"rogue", b"plain"):
        with pytest.raises(zmq.ZMQError):
            router.send_multipart([identity, b"result"])
    assert received(rogue, 100) == []


@pytest.mark.parametrize("intruder", ["plain", "rogue"])
def test_curve_push_server_sends_nothing_to_an_unauthorised_pull(secure: Transport, plain: Transport, keys: Path, intruder: str) -> None:
    # The other direction: a bound PUSH (e.g. a hub fanning out work) with an unauthorised peer connected.
    push = secure.server(zmq.PUSH, LOOPBACK)
    if intruder == "plain":
        thief = plain.client(zmq.PULL, endpoint(push))
    else:
        thief = rogue_client(secure.context, zmq.PULL, server_public_key(keys))
        thief.connect(endpoint(push))
    # No handshake completed, so the PUSH has no peer to send to at all.
    assert not push.poll(NOTHING_MS, zmq.POLLOUT)
    with pytest.raises(zmq.Again):
        push.send(b"secret", zmq.NOBLOCK)
    friend = secure.client(zmq.PULL, endpoint(push))
    assert push.poll(DELIVER_MS, zmq.POLLOUT)
    for index in range(4):
        push.send(b"secret %d" % index)
    assert len(received(friend, DELIVER_MS)) == 4
    assert received(thief, 100) == []


def test_curve_asyncio_sockets(keys: Path) -> None:
    async def exchange() -> list[bytes]:
        with Transport(TransportConfig(curve_keys_dir=keys), asyncio=True) as transport:
            assert isinstance(transport.context, zmq.asyncio.Context)
            router = transport.server(zmq.ROUTER, LOOPBACK)
            dealer = transport.client(zmq.DEALER, endpoint(router), identity=b"a0")
            assert isinstance(router, zmq.asyncio.Socket)
            await dealer.send(b"ping")
            identity, body = await asyncio.wait_for(router.recv_multipart(), DELIVER_MS / 1000)
            await router.send_multipart([identity, body + b"-pong"])
            reply = await asyncio.wait_for(dealer.recv(), DELIVER_MS / 1000)
            return [identity, reply]

    assert asyncio.run(exchange()) == [b"a0", b"ping-pong"]


def test_curve_asyncio_rejects_plain_peer(keys: Path, plain: Transport) -> None:
    async def listen() -> list[bytes]:
        with Transport(TransportConfig(curve_keys_dir=keys), asyncio=True) as transport:
            pull = transport.server(zmq.PULL, LOOPBACK)
            intruder = plain.client(zmq.PUSH, endpoint(pull))
            intruder.send(b"intruder")
            got = []
            try:
                got.append(await asyncio.wait_for(pull.recv(), NOTHING_MS / 1000))
            except asyncio.TimeoutError:
                pass
            friend = transport.client(zmq.PUSH, endpoint(pull))
            await friend.send(b"friend")
            got.append(await asyncio.wait_for(pull.recv(), DELIVER_MS / 1000))
            return got

    assert asyncio.run(listen()) == [b"friend"]


# ---------------------------------------------------------------- keys


def test_missing_key_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keys"
    with pytest.raises(TransportError, match=str(missing)):
        Transport(TransportConfig(curve_keys_dir=missing))


def test_missing_authorized_dir_names_the_path(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    for public in (tmp_path / AUTHORIZED_DIR).iterdir():
        public.unlink()
    (tmp_path / AUTHORIZED_DIR).rmdir()
    with pytest.raises(TransportError, match=str(tmp_path / AUTHORIZED_DIR)):
        Transport(TransportConfig(curve_keys_dir=tmp_path))


def test_public_key_in_place_of_secret_is_an_error(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    (tmp_path / "client.key_secret").write_bytes((tmp_path / "client.key").read_bytes())
    with pytest.raises(TransportError, match="client.key_secret"):
        Transport(TransportConfig(curve_keys_dir=tmp_path))


def test_rlef_keys_generate_cli(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = subprocess.run([str(RLEF), "keys", "generate", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", f"{AUTHORIZED_DIR}/client.key"):
        assert (out / name).is_file(), name
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE(os.stat(out / secret).st_mode) == 0o600
    assert (out / "client.key").read_bytes() == (out / AUTHORIZED_DIR / "client.key").read_bytes()
    # The generated keys work end to end; regenerating replaces them (old clients are locked out).
    with Transport(TransportConfig(curve_keys_dir=out)) as transport:
        pull = transport.server(zmq.PULL, LOOPBACK)
        push = transport.client(zmq.PUSH, endpoint(pull))
        push.send(b"ok")
        assert received(pull, DELIVER_MS) == [[b"ok"]]
    before = (out / "client.key").read_bytes()
    assert subprocess.run([str(RLEF), "keys", "generate", str(out)], capture_output=True, timeout=60).returncode == 0
    assert (out / "client.key").read_bytes() != before
