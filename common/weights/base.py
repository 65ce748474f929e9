"""The one weights interface every transport implements: a publisher on learner rank 0, a receiver per actor.

Invariants every implementation keeps:
- ``WeightPublisher.publish(version, state_dict)`` takes the FULL state dict (Hugging Face parameter names,
  CPU tensors) and never blocks on receivers; versions must increase. The publisher may keep references to
  the tensors until the call returns, never after (it copies what it serves).
- ``WeightReceiver.poll()`` hands out only a whole, checksum-verified version, newest first, each at most
  once; intermediate versions that were superseded before they were handed out are skipped.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)


@dataclass
class ReceivedWeights:
    """A whole, verified version. ``tensors`` may be views of one shared buffer: treat them as read-only,
    and drop this object once the engine has applied (copied) it, so the buffer can be recycled for a later
    version. ``path`` is a safetensors file of this version when the transport has one (filesystem)."""

    version: int
    tensors: dict[str, torch.Tensor]
    path: Path | None = None
    checksum: str = ""  # names the version's content (zmq/collective: the manifest's xxh3; filesystem: the file's sha256)
    nbytes: int = 0
    seconds: float = field(default=0.0, compare=False)

    def save_safetensors(self, path: Path) -> Path:
        """Write this version as one safetensors file (for engines whose reload path wants a file)."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp), metadata={"version": str(self.version)})
        tmp.replace(path)
        return path


class WeightPublisher(abc.ABC):
    """Learner rank 0's side: make a version available to every receiver."""

    transport_name: str = ""

    @abc.abstractmethod
    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Publish ``version`` (> every earlier one). Returns once the publisher no longer needs the tensors."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Newest published version (-1 before the first)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop serving and release sockets, groups, threads. Idempotent."""

    def __enter__(self) -> "WeightPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WeightReceiver(abc.ABC):
    """An actor's side: fetch versions in the background, hand out whole verified ones through ``poll``."""

    transport_name: str = ""

    @abc.abstractmethod
    def poll(self, timeout_s: float = 0.0) -> ReceivedWeights | None:
        """The newest complete version not yet returned, waiting up to ``timeout_s``; None if there is none."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Version of the newest ReceivedWeights returned by ``poll`` (-1 before the first)."""

    def notify(self, hub_version: int) -> None:
        """A hint that the hub holds ``hub_version`` (e.g. from the control channel): fetch it soon.
        Transports that learn about versions by themselves ignore it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the background work and release resources. Idempotent."""

    def __enter__(self) -> "WeightReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadedReceiver(WeightReceiver):
    """A receiver whose background thread (``_run``) fetches versions and hands each whole, verified one to
    ``_deliver``; ``poll`` gives out the newest delivered one, at most once (a newer delivery replaces one not
    yet taken). Subclasses set their own fields, call ``_start_thread`` last in ``__init__``, and stop through
    ``_stop_thread`` in ``close``. Metrics carry the subclass's ``transport_name`` as label."""

    def __init__(self, thread_name: str):
        self._cond = threading.Condition()
        self._ready: ReceivedWeights | None = None
        self._version = -1
        self._have = -1  # newest complete version received (returned by poll or waiting in _ready)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @abc.abstractmethod
    def _run(self) -> None:
        """The background thread: fetch, verify, ``_deliver``; return once ``_stop`` is set."""

    def _start_thread(self) -> None:
        self._thread.start()

    def _stop_thread(self, timeout: float | None = None, *, wake: bool = False) -> None:
        """Set ``_stop`` (then ``_wake`` if asked), join the thread (up to ``timeout``), then wake every
        waiting ``poll`` so it returns."""
        self._stop.set()
        if wake:
            self._wake.set()
        self._thread.join(timeout)
        with self._cond:
            self._cond.notify_all()

    def _poll_done(self) -> bool:
        """Whether a waiting ``poll`` gives up before ``timeout_s`` (called under ``_cond``)."""
        return self._stop.is_set()

    def _deliver(self, received: ReceivedWeights) -> None:
        """Called by ``_run`` with a whole, verified version newer than ``_have``."""
        self._have = received.version
        with self._cond:
            self._ready = received  # a newer whole version replaces one not yet taken
            self._cond.notify_all()

    @property
    def version(self) -> int:
        return self._version

    def poll(self, timeout_s: float = 0.0) -> ReceivedWeights | None:
        with self._cond:
            if self._ready is None and timeout_s > 0:
                self._cond.wait_for(lambda: self._ready is not None or self._poll_done(), timeout_s)
            ready, self._ready = self._ready, None
        if ready is not None:
            self._version = ready.version
            M.VERSIONS_APPLIED.labels(self.transport_name).inc()
        return ready

    def notify(self, hub_version: int) -> None:
        if hub_version > self._have:
            self._wake.set()
