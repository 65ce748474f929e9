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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass
class ReceivedWeights:
    """A whole, verified version. ``tensors`` may be views of one shared buffer: treat them as read-only,
    and drop this object once the engine has applied (copied) it, so the buffer can be recycled for a later
    version. ``path`` is a safetensors file of this version when the transport has one (filesystem)."""

    version: int
    tensors: dict[str, torch.Tensor]
    path: Path | None = None
    sha256: str = ""
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
