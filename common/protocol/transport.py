"""ZeroMQ sockets configured one way for every role: high-water marks, linger, reconnect back-off, a frame
size cap, and CURVE authentication + encryption on every socket when ``transport.curve_keys_dir`` is set.

CURVE layout (``rlef keys generate DIR``): ``server.key`` / ``server.key_secret`` (every bind side uses
this pair) and ``client.key`` / ``client.key_secret`` (every connect side). Binding sockets authenticate
clients through a ZAP handler that accepts only the public keys found in ``DIR/authorized`` (the client
key is put there), so a peer without the right key completes no handshake and gets nothing through.
Without keys, sockets are plain TCP: fine on a private cluster network, never on a shared one.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from rlef.common.config import TransportConfig
from rlef.common.errors import TransportError

AUTHORIZED_DIR = "authorized"


def generate_keys(directory: Path) -> Path:
    """Write a server and a client key pair into ``directory`` and authorise the client key."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        for suffix in (".key", ".key_secret"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)
        zmq.auth.create_certificates(str(directory), name)
    (directory / "server.key_secret").chmod(0o600)
    (directory / "client.key_secret").chmod(0o600)
    authorized = directory / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True)
    shutil.copy(directory / "client.key", authorized / "client.key")
    return directory


def _load_pair(directory: Path, name: str) -> tuple[bytes, bytes]:
    path = directory / f"{name}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise TransportError(f"CURVE key {path}: {exc} (run `rlef keys generate {directory}`)") from exc
    if secret is None:
        raise TransportError(f"CURVE key {path} holds no secret key")
    return public, secret


def _apply_options(sock: zmq.Socket, endpoint: str, options: dict[str, Any]) -> None:
    """Per-socket extras by lower-case ZeroMQ option name (``rcvtimeo=1000``); a bad one closes the socket."""
    for name, value in options.items():
        option = getattr(zmq, name.upper(), None)
        try:
            if not isinstance(option, int):
                raise ValueError("no such ZeroMQ socket option")
            sock.setsockopt(option, value)
        except (ValueError, TypeError, zmq.ZMQError) as exc:
            sock.close(0)
            raise TransportError(f"socket for {endpoint}: option {name}={value!r}: {exc}") from exc


def _attach(sock: zmq.Socket, endpoint: str, options: dict[str, Any], attach: Callable[[str], Any], failure: str) -> zmq.Socket:
    """Apply ``options``, then bind or connect (``attach``) to ``endpoint``; a failure closes the socket and
    raises TransportError starting with ``failure`` ("cannot bind")."""
    _apply_options(sock, endpoint, options)
    try:
        attach(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise TransportError(f"{failure} {endpoint}: {exc}") from exc
    return sock


class Transport:
    """One ZeroMQ context per process, with the project's socket options and optional CURVE.

    ``server()`` binds, ``client()`` connects. ``asyncio=True`` hands out ``zmq.asyncio`` sockets over the
    same underlying context (so one ZAP authenticator serves both kinds).
    """

    def __init__(self, config: TransportConfig, *, asyncio: bool = False):
        self.config = config
        self._sync_ctx = zmq.Context()
        self.context: zmq.Context = zmq.asyncio.Context.shadow(self._sync_ctx) if asyncio else self._sync_ctx
        self._auth: ThreadAuthenticator | None = None
        # Sockets handed out, closed by close(): the asyncio shadow context tracks its own sockets, so
        # destroying the underlying context alone would block forever in zmq_ctx_term on them.
        self._sockets: weakref.WeakSet[zmq.Socket] = weakref.WeakSet()
        self._server_pair: tuple[bytes, bytes] | None = None
        self._client_pair: tuple[bytes, bytes] | None = None
        self._server_public: bytes | None = None
        keys = config.curve_keys_dir
        if keys is not None:
            if not zmq.has("curve"):
                raise TransportError("transport.curve_keys_dir is set but this libzmq was built without CURVE")
            keys = Path(keys)
            self._server_pair = _load_pair(keys, "server")
            self._client_pair = _load_pair(keys, "client")
            self._server_public = self._server_pair[0]
            self._authorized = keys / AUTHORIZED_DIR
            if not self._authorized.is_dir():
                raise TransportError(f"CURVE: {self._authorized} is missing (run `rlef keys generate {keys}`)")

    @property
    def secure(self) -> bool:
        return self._server_pair is not None

    def _socket(self, socket_type: int) -> zmq.Socket:
        """A new socket of this context with the project's options, closed by :meth:`close`."""
        sock = self.context.socket(socket_type)
        self._sockets.add(sock)
        self._common_options(sock, socket_type)
        return sock

    def _common_options(self, sock: zmq.Socket, socket_type: int) -> None:
        cfg = self.config
        sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        sock.setsockopt(zmq.RECONNECT_IVL, cfg.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, cfg.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        if socket_type == zmq.ROUTER:
            # An unroutable reply raises instead of vanishing silently.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)

    def _start_auth(self) -> None:
        if self._auth is None:
            self._auth = ThreadAuthenticator(self._sync_ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self._authorized))

    def server(self, socket_type: int, endpoint: str, **options: Any) -> zmq.Socket:
        """A socket bound to ``endpoint`` (``tcp://host:0`` binds a free port: read ``last_endpoint``)."""
        sock = self._socket(socket_type)
        if self._server_pair is not None:
            self._start_auth()
            public, secret = self._server_pair
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        return _attach(sock, endpoint, options, sock.bind, "cannot bind")

    def client(self, socket_type: int, endpoint: str, *, identity: bytes | None = None, **options: Any) -> zmq.Socket:
        """A socket connected to ``endpoint``; ZeroMQ reconnects by itself with back-off."""
        sock = self._socket(socket_type)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        if self._client_pair is not None:
            public, secret = self._client_pair
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = self._server_public
        return _attach(sock, endpoint, options, sock.connect, "cannot connect to")

    def close(self) -> None:
        """Close every socket this transport handed out (linger 0), stop the ZAP handler, end the context."""
        for sock in list(self._sockets):
            if not sock.closed:
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._sync_ctx.destroy(linger=0)

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bound_port(sock: zmq.Socket) -> int:
    """The TCP port a socket bound (after binding ``tcp://host:0``)."""
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    return int(endpoint.rsplit(":", 1)[1])
