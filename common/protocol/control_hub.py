"""The control channel between the learner hub (rank 0) and its peers (actors, launchers).

Wire (every frame one :class:`~rlef.common.messages.Control`; ROUTER bound on the hub at
``endpoints.control_port``, one DEALER per peer):

    peer -> hub   register(sender_id, role, capabilities, info)    hub -> peer   ack(version, info.config_digest)
                                                                   or stop(info.refused) if the config differs
    peer -> hub   heartbeat(version the peer holds)                hub -> peer   ack(version)
                                                                   hub -> peers  version(v)  on set_version(v)
                                                                   hub -> peers  stop        on request_stop()

Start order does not matter: a DEALER queues its register until the hub binds, and the client re-sends it
with back-off until acknowledged; a hub that restarts learns peers again from their heartbeats (a heartbeat
from an unknown peer registers it).

Hub restarts: every hub message carries ``info.incarnation``, a nonce drawn when the hub starts. A peer that
sees it change knows the hub restarted, possibly from a checkpoint OLDER than the weights the peer holds (a
learner killed before its checkpoint resumes at version 0 while actors hold 7): its version numbers then
start a new lineage, and the peer must re-base onto the hub's weights even when its own number is higher
(:meth:`ControlClient.add_restart_listener`; the actor's WeightSync does it). Once stop was requested, every later register or heartbeat is answered
with ``stop`` too, so a peer that joins late still stops.

Config agreement: a peer made by :func:`make_control_client` sends one digest per shared config key
(rlef.common.config_digest: model, tokenizer, prompt and feedback, rewards, turn limit, staleness) in its
register ``info``; a hub made by :func:`make_control_server` compares them with its own and refuses a peer
whose digests differ (or that sent none) with ``stop`` and ``info.refused`` naming the keys; the peer's
:meth:`ControlClient.register` then raises PeerRefused. A peer re-registers when it sees the hub restart,
so a restarted hub with another config refuses it too. Hubs and clients built without digests (tests'
scripted hubs) compare nothing.

Threads: :class:`ControlServer` and :class:`ControlClient` each own their socket in one background thread;
their public methods are thread-safe (commands go through a queue, state is read atomically). The client
heartbeats by itself every ``heartbeat_interval_s`` with the version last given to :meth:`ControlClient.heartbeat`
(or :meth:`ControlClient.set_local_version`); actors need no tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq

from rlef.common.config import RlefConfig
from rlef.common.config_digest import combined_digest, differing_keys, from_info, shared_config_digests, to_info
from rlef.common.errors import MessageError, PeerRefused, TransportError
from rlef.common.log_limit import LogLimiter, printable
from rlef.common.messages import Control, decode, encode
from rlef.common.router_loop import serve_router
from rlef.common.transport import Transport
from rlef.monitoring import metrics_control as M

log = logging.getLogger(__name__)

_POLL_MS = 50
_MAX_FRAME = 64 << 10


def config_digest(config: RlefConfig) -> str:
    """One digest of the config parts every role must agree on (rlef.common.config_digest)."""
    return combined_digest(shared_config_digests(config))


def refusal(hub_digests: dict[str, str], info: dict) -> str | None:
    """Why the hub refuses a peer whose register ``info`` is this (None: accepted)."""
    theirs = from_info(info)
    if not theirs:
        return "the peer sent no config digests (an older rlef, or a client made without make_control_client)"
    differ = differing_keys(hub_digests, theirs)
    if not differ:
        return None
    return f"config differs from the learner's in: {', '.join(differ)} (start every role with the same config for these keys)"


@dataclass
class Peer:
    """A registered peer as the hub sees it."""

    sender_id: str
    role: str
    identity: bytes
    version: int = -1
    capabilities: list[str] = field(default_factory=list)
    info: dict[str, str | int | float | bool] = field(default_factory=dict)
    registered_at: float = 0.0  # time.time()
    last_seen: float = 0.0  # time.time()


class ControlServer:
    """Hub side: registration, heartbeats, version announcements and stop requests (background thread)."""

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        *,
        hub_id: str = "learner-0",
        config_digests: dict[str, str] | None = None,
        version: int = -1,
        peer_timeout_s: float = 30.0,
    ):
        self.endpoint = endpoint
        self.hub_id = hub_id
        self.config_digests = config_digests  # None: compare nothing (module docstring)
        self.config_digest = combined_digest(config_digests) if config_digests is not None else ""
        self.refused: list[tuple[str, str]] = []  # (sender_id, reason) of refused registrations
        self.peer_timeout_s = peer_timeout_s
        self._version = version
        self._stopping = False
        self._peers: dict[bytes, Peer] = {}
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._bad_logged: set[bytes] = set()
        self._bad_log = LogLimiter(log, "control hub: bad messages")
        self._refused_logged: set[str] = set()
        self._refused_log = LogLimiter(log, "control hub: refused peers")
        self.bad_messages = 0
        # Fresh per start: tells peers this hub is not the one they knew (module docstring, "Hub restarts").
        self.incarnation = uuid.uuid4().hex[:16]
        self._sock = transport.server(zmq.ROUTER, endpoint, router_handover=1)
        # What peers connect to (the real port when ``endpoint`` asked for port 0).
        self.bound_endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._serve, name="control-hub", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self._version

    @property
    def stop_requested(self) -> bool:
        return self._stopping

    def set_version(self, version: int) -> None:
        """Record the hub's current version and announce it to every live peer."""
        self._version = version
        self._commands.put(("version", version))

    def request_stop(self) -> None:
        """Tell every peer (and every one that registers later) to stop."""
        self._stopping = True
        self._commands.put(("stop", self._version))

    def peers(self, max_age_s: float | None = None) -> list[Peer]:
        """Registered peers seen within ``max_age_s`` (default: the peer timeout), oldest registration first."""
        limit = self.peer_timeout_s if max_age_s is None else max_age_s
        now = time.time()
        with self._lock:
            return sorted((p for p in self._peers.values() if now - p.last_seen <= limit), key=lambda p: p.registered_at)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving thread

    def _reply(self, op: str, **info: str | int | float | bool) -> bytes:
        info = {**info, "incarnation": self.incarnation}
        return encode(Control(op=op, sender_id=self.hub_id, role="learner", version=self._version, info=info))

    def _send(self, identity: bytes, frame: bytes) -> None:
        try:
            self._sock.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (peer gone) or EAGAIN (peer not reading): it will heartbeat
            log.debug("control hub: cannot reach %r: %s", identity[:64], exc)

    def _serve(self) -> None:
        serve_router(self._sock, self._stop, self._handle, self._bad, lambda _now: self._expire(),
                     before_poll=self._run_commands, poll_ms=_POLL_MS)

    def _run_commands(self) -> None:
        while True:
            try:
                command, _ = self._commands.get_nowait()
            except queue.Empty:
                return
            frame = self._reply("stop") if command == "stop" else self._reply("version")
            for peer in self.peers():
                self._send(peer.identity, frame)

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            for identity in [i for i, p in self._peers.items() if now - p.last_seen > 10 * self.peer_timeout_s]:
                del self._peers[identity]
        M.CONTROL_PEERS.set(len(self.peers()))

    def _bad(self, identity: bytes, reason: str) -> None:
        self.bad_messages += 1
        M.CONTROL_BAD_MESSAGES.inc()
        if identity not in self._bad_logged and len(self._bad_logged) < 1000:  # once per peer, within the log budget
            self._bad_logged.add(identity)
            self._bad_log.warning("control hub: dropped a bad message from %s: %s", identity[:64], reason)

    def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            message = decode(frame, Control, sender=identity[:64].decode(errors="replace"), max_frame=_MAX_FRAME)
        except MessageError as exc:
            self._bad(identity, str(exc))
            return
        if message.op not in ("register", "heartbeat"):
            self._bad(identity, f"op {message.op} is not for the hub (from {message.sender_id})")
            return
        if message.op == "register" and self.config_digests is not None:
            reason = refusal(self.config_digests, dict(message.info))
            if reason is not None:
                self._refuse(identity, message, reason)
                return
        now = time.time()
        with self._lock:
            peer = self._peers.get(identity)
            if peer is None or message.op == "register":
                if peer is None:
                    log.info("control hub: %s %s (%s) %s", message.role, printable(message.sender_id),
                             printable(",".join(message.capabilities) or "-"),
                             "registered" if message.op == "register" else "is back")
                peer = Peer(sender_id=message.sender_id, role=message.role, identity=identity,
                            capabilities=list(message.capabilities), info=dict(message.info), registered_at=now)
                self._peers[identity] = peer
            peer.version = message.version
            peer.last_seen = now
        if self._stopping:
            self._send(identity, self._reply("stop"))
        elif message.op == "register":
            self._send(identity, self._reply("ack", config_digest=self.config_digest, hub_id=self.hub_id))
        else:
            self._send(identity, self._reply("ack"))

    def _refuse(self, identity: bytes, message: Control, reason: str) -> None:
        with self._lock:
            self._peers.pop(identity, None)  # registered earlier by a heartbeat (hub restart): no longer
        M.CONTROL_PEERS_REFUSED.inc()
        self.refused.append((message.sender_id, reason))
        del self.refused[:-100]  # bounded: a peer retrying forever must not grow it
        if message.sender_id not in self._refused_logged and len(self._refused_logged) < 1000:  # once per peer
            self._refused_logged.add(message.sender_id)
            self._refused_log.warning("control hub: refused %s %s: %s", message.role, message.sender_id, reason)
        self._send(identity, self._reply("stop", refused=reason[:1000]))


class ControlClient:
    """Peer side: registers with the hub, heartbeats in a background thread, tracks the hub's version."""

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        client_id: str,
        *,
        role: str = "actor",
        heartbeat_interval_s: float = 1.0,
        config_digests: dict[str, str] | None = None,
    ):
        self.endpoint = endpoint
        self.client_id = client_id
        self.role = role
        self.config_digests = config_digests
        self.refused: str | None = None  # the hub's reason, when it refused our registration
        self.heartbeat_interval_s = heartbeat_interval_s
        self.hub_version = -1
        self.hub_config_digest = ""
        self.stop_requested = False
        self.last_heard = 0.0  # time.monotonic() of the hub's last message (0: never)
        self.bad_messages = 0
        self._bad_log = LogLimiter(log, f"control {client_id}: bad messages")
        self.hub_incarnation = ""  # the hub's nonce ("" until it answered; a change means it restarted)
        self.hub_restarts = 0
        self._local_version = -1
        self._capabilities: list[str] = []
        self._info: dict[str, str | int | float | bool] = {}
        self._registering = False
        self._reregister = False  # the hub restarted: register again so it compares our config
        self._registered = threading.Event()
        self._beat_now = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[Callable[[int], None]] = []
        self._restart_listeners: list[Callable[[int], None]] = []
        # immediate: while the hub is away messages fail at once (the loop re-sends) instead of queueing up.
        self._sock = transport.client(zmq.DEALER, endpoint, immediate=1)
        self._thread = threading.Thread(target=self._run, name=f"control-{client_id}", daemon=True)
        self._thread.start()

    @property
    def registered(self) -> bool:
        return self._registered.is_set() and self.refused is None

    def add_version_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(hub_version)`` (from the client thread: keep it quick) whenever the hub's version
        changes, e.g. ``receiver.notify``."""
        self._listeners.append(listener)

    def add_restart_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(hub_version)`` (from the client thread: keep it quick) when the hub turns out to
        have restarted (its incarnation changed): versions from then on are the new hub's lineage."""
        self._restart_listeners.append(listener)

    def register(
        self, capabilities: Iterable[str] = (), *, timeout_s: float = 60.0, info: dict[str, str | int | float | bool] | None = None
    ) -> int:
        """Register (re-sent with back-off until the hub answers) and return the hub's version; heartbeats
        start afterwards. Raises TransportError when the hub does not answer within ``timeout_s``, PeerRefused
        when it refuses this peer (its shared config differs from the hub's)."""
        self._capabilities = list(capabilities)
        self._info = {**(info or {}), **to_info(self.config_digests or {})}
        self._registering = True
        if not self._registered.wait(timeout_s):
            raise TransportError(f"control: hub at {self.endpoint} did not answer {self.client_id}'s registration within {timeout_s}s")
        if self.refused is not None:
            raise PeerRefused(f"control: the hub at {self.endpoint} refused {self.client_id}: {self.refused}")
        return self.hub_version

    def set_local_version(self, version: int) -> None:
        """The version this peer holds, reported in the next heartbeats."""
        self._local_version = version

    def heartbeat(self, version: int) -> None:
        """Report ``version`` now (heartbeats also go out every ``heartbeat_interval_s`` by themselves)."""
        self._local_version = version
        self._beat_now.set()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ client thread

    def _message(self, op: str) -> bytes:
        return encode(Control(op=op, sender_id=self.client_id, role=self.role, version=self._local_version,
                              capabilities=self._capabilities, info=self._info if op == "register" else {}))

    def _send(self, frame: bytes) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # HWM while the hub is away: the next heartbeat/retry goes out later
            pass

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        backoff = 0.1
        next_send = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._registering and not self._registered.is_set():
                    if now >= next_send:
                        self._send(self._message("register"))
                        next_send = now + backoff
                        backoff = min(backoff * 2, 2.0)
                elif self._registered.is_set() and self._reregister:
                    self._reregister = False
                    self._send(self._message("register"))
                    next_send = now + self.heartbeat_interval_s
                elif self._registered.is_set() and (now >= next_send or self._beat_now.is_set()):
                    self._beat_now.clear()
                    self._send(self._message("heartbeat"))
                    next_send = now + self.heartbeat_interval_s
                if poller.poll(_POLL_MS):
                    for _ in range(100):
                        try:
                            frame = self._sock.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if self._handle(frame) and self._registering and not self._registered.is_set():
                            self._registered.set()
                            next_send = time.monotonic() + self.heartbeat_interval_s
        finally:
            self._sock.close(0)

    def _handle(self, frame: bytes) -> bool:
        """Apply one hub message; True when it answers a registration (ack or stop)."""
        try:
            message = decode(frame, Control, sender=self.endpoint, max_frame=_MAX_FRAME)
        except MessageError as exc:
            self._bad(str(exc))
            return False
        if message.op not in ("ack", "version", "stop"):
            self._bad(f"op {message.op} is not for a peer")
            return False
        self.last_heard = time.monotonic()
        digest = message.info.get("config_digest")
        if isinstance(digest, str):
            self.hub_config_digest = digest
        incarnation = message.info.get("incarnation")
        restarted = False
        if isinstance(incarnation, str) and incarnation != self.hub_incarnation:
            restarted = bool(self.hub_incarnation)
            self.hub_incarnation = incarnation
        if restarted:
            self.hub_restarts += 1
            self._reregister = self._registering  # the new hub has not compared our config yet
            M.CONTROL_HUB_RESTARTS.inc()
            log.warning("control %s: the hub restarted (now at version %d; we hold %d): re-basing onto its weights",
                        self.client_id, message.version, self._local_version)
        refused = message.info.get("refused")
        if message.op == "stop" and isinstance(refused, str) and self.refused is None:
            log.error("control %s: the hub refused our registration: %s", self.client_id, refused)
            self.refused = refused
        if message.op == "stop" and not self.stop_requested:
            if self.refused is None:
                log.info("control %s: the hub requested stop", self.client_id)
            self.stop_requested = True
        changed = message.version != self.hub_version
        self.hub_version = message.version
        M.CONTROL_HUB_VERSION.set(message.version)
        if restarted:
            for listener in self._restart_listeners:
                listener(message.version)
        if changed:
            for listener in self._listeners:
                listener(message.version)
        return message.op in ("ack", "stop")

    def _bad(self, reason: str) -> None:
        self.bad_messages += 1
        M.CONTROL_CLIENT_BAD_MESSAGES.inc()
        if self.bad_messages == 1 or self.bad_messages % 1000 == 0:
            self._bad_log.warning("control %s: dropped a bad message from %s (%d so far): %s", self.client_id,
                                  self.endpoint, self.bad_messages, reason)


def make_control_server(config: RlefConfig, transport: Transport, *, version: int = -1, hub_id: str = "learner-0") -> ControlServer:
    """The hub's control server bound on ``endpoints.control_port`` (learner rank 0)."""
    return ControlServer(transport, config.endpoints.bind(config.endpoints.control_port), hub_id=hub_id,
                         config_digests=shared_config_digests(config), version=version)


def make_control_client(config: RlefConfig, transport: Transport, client_id: str, *, role: str = "actor",
                        heartbeat_interval_s: float = 1.0) -> ControlClient:
    """A peer's control client connected to the hub's ``endpoints.control_port``."""
    return ControlClient(transport, config.endpoints.learner(config.endpoints.control_port), client_id, role=role,
                         heartbeat_interval_s=heartbeat_interval_s, config_digests=shared_config_digests(config))
