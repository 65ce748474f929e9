"""The peer side of the control channel (actors, launchers, the evaluator): :class:`ControlClient`.

The wire, hub restarts and config agreement are described in :mod:`rlef.common.protocol.control_hub`. The
client registers (re-sent with back-off until the hub answers), then heartbeats by itself every
``heartbeat_interval_s`` with the version last given to :meth:`ControlClient.heartbeat` (or
:meth:`ControlClient.set_local_version`), and tracks the hub's version, incarnation and stop requests. It
owns its socket in one background thread; its public methods are thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import zmq

from rlef.common.config import RlefConfig
from rlef.common.errors import MessageError, PeerRefused, TransportError
from rlef.common.log_limit import LogLimiter
from rlef.common.protocol.base import MAX_CONTROL_FRAME_BYTES
from rlef.common.protocol.config_digest import shared_config_digests, to_info
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, encode
from rlef.common.protocol.transport import Transport
from rlef.monitoring import metrics_control as M

log = logging.getLogger(__name__)

_POLL_MS = 50


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
            message = decode(frame, Control, sender=self.endpoint, max_frame=MAX_CONTROL_FRAME_BYTES)
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


def make_control_client(config: RlefConfig, transport: Transport, client_id: str, *, role: str = "actor",
                        heartbeat_interval_s: float = 1.0) -> ControlClient:
    """A peer's control client connected to the hub's ``endpoints.control_port``."""
    return ControlClient(transport, config.endpoints.learner(config.endpoints.control_port), client_id, role=role,
                         heartbeat_interval_s=heartbeat_interval_s, config_digests=shared_config_digests(config))
