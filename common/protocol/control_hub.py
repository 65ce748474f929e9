"""The control channel between the learner hub (rank 0) and its peers (actors, launchers), and its hub side,
:class:`ControlServer`. The peer side is :class:`~rlef.common.protocol.control_client.ControlClient`.

Wire (every frame one :class:`~rlef.common.protocol.messages.Control`; ROUTER bound on the hub at
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
(:meth:`~rlef.common.protocol.control_client.ControlClient.add_restart_listener`; the actor's WeightSync
does it). Once stop was requested, every later register or heartbeat is answered with ``stop`` too, so a
peer that joins late still stops.

Config agreement: a peer made by :func:`~rlef.common.protocol.control_client.make_control_client` sends one
digest per shared config key (rlef.common.protocol.config_digest: model, tokenizer, prompt and feedback, rewards,
turn limit, staleness) in its register ``info``; a hub made by :func:`make_control_server` compares them
with its own and refuses a peer whose digests differ (or that sent none) with ``stop`` and ``info.refused``
naming the keys (:func:`~rlef.common.protocol.config_digest.refusal`); the peer's ``register`` then raises
PeerRefused. A peer re-registers when it sees the hub restart, so a restarted hub with another config
refuses it too. Hubs and clients built without digests (tests' scripted hubs) compare nothing.

Threads: :class:`ControlServer` and the client each own their socket in one background thread; their public
methods are thread-safe (commands go through a queue, state is read atomically). The client heartbeats by
itself every ``heartbeat_interval_s``; actors need no tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import zmq

from rlef.common.config import RlefConfig
from rlef.common.errors import MessageError
from rlef.common.log_limit import LogOnce, printable
from rlef.common.protocol.base import MAX_CONTROL_FRAME_BYTES
from rlef.common.protocol.config_digest import combined_digest, refusal, shared_config_digests
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, encode
from rlef.common.protocol.router_loop import serve_router
from rlef.common.protocol.transport import Transport
from rlef.monitoring import metrics_control as M

log = logging.getLogger(__name__)

_POLL_MS = 50


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
        self._bad_log = LogOnce(log, "control hub: bad messages", max_keys=1000)  # once per peer
        self._refused_log = LogOnce(log, "control hub: refused peers", max_keys=1000)
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
        self._bad_log.warning(identity, "control hub: dropped a bad message from %s: %s", identity[:64], reason)

    def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            message = decode(frame, Control, sender=identity[:64].decode(errors="replace"), max_frame=MAX_CONTROL_FRAME_BYTES)
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
        self._refused_log.warning(message.sender_id, "control hub: refused %s %s: %s", message.role, message.sender_id, reason)
        self._send(identity, self._reply("stop", refused=reason[:1000]))


def make_control_server(config: RlefConfig, transport: Transport, *, version: int = -1, hub_id: str = "learner-0") -> ControlServer:
    """The hub's control server bound on ``endpoints.control_port`` (learner rank 0)."""
    return ControlServer(transport, config.endpoints.bind(config.endpoints.control_port), hub_id=hub_id,
                         config_digests=shared_config_digests(config), version=version)

