"""The serving loop of a hub that answers peers on one ROUTER socket from its own background thread
(``rlef.common.protocol.control_hub.ControlServer``, ``rlef.common.weights.zmq.hub.ZmqPublisher``), and the
drain of a ROUTER's queue it runs (also the weights relay's, :mod:`rlef.common.weights.zmq.relay`).

Invariant: the socket is used only from the thread running ``serve_router`` and is closed (linger 0) when
the loop ends, however it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

_DRAIN = 1000  # messages handled per wake-up before the stop flag is looked at again


def serve_router(
    sock: zmq.Socket,
    stop: threading.Event,
    handle: Callable[[bytes, bytes], None],
    bad: Callable[[bytes, str], None],
    every_second: Callable[[float], None],
    *,
    before_poll: Callable[[], None] | None = None,
    poll_ms: int = 50,
) -> None:
    """Until ``stop`` is set: call ``before_poll``, wait up to ``poll_ms`` for messages, hand each queued
    one to ``handle(identity, frame)`` (at most ``_DRAIN`` per round, so one busy peer does not starve the
    stop check; one that is not exactly identity + message goes to ``bad(identity, reason)`` instead), and
    call ``every_second(time.monotonic())`` at most once a second. Closes ``sock`` on return."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    last = 0.0
    try:
        while not stop.is_set():
            if before_poll is not None:
                before_poll()
            if poller.poll(poll_ms):
                drain_router(sock, handle, bad)
            now = time.monotonic()
            if now - last > 1.0:
                last = now
                every_second(now)
    finally:
        sock.close(0)


def drain_router(
    sock: zmq.Socket, handle: Callable[[bytes, bytes], None], bad: Callable[[bytes, str], None], limit: int = _DRAIN
) -> None:
    """Hand each message queued on ROUTER ``sock`` (at most ``limit``, without waiting) to
    ``handle(identity, frame)``; one that is not exactly identity + message goes to ``bad(identity, reason)``."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) != 2:
            bad(frames[0] if frames else b"?", f"{len(frames)} frames, expected identity + message")
        else:
            handle(frames[0], frames[1])
