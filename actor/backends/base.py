"""The one interface every generation backend implements, and the values it exchanges.

Scope: turn a prompt (token ids) into one sampled response (token ids + the behaviour log-probability of
each sampled token + why it stopped + which policy version produced it), and take new weights in between
generation steps. Backends batch concurrent ``generate`` calls themselves (the episode runner keeps K of them
in flight); they never drop an in-flight request when weights change.

Invariant of ``Generation.logprobs``: entry j is log p(token_j | prompt, tokens_<j) under the distribution
the token was actually SAMPLED from (temperature, top-p, top-k applied). With temperature 1 and neither
top-p nor top-k (the paper's training setting) that is the model's own log-probability, which is what the
learner's off-policy importance weight min(pi_theta / pi_b, 1) needs. With temperature 0 (greedy) the
sampling distribution is a point mass; backends then report the model's log-probabilities instead.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request (``top_k <= 0`` and ``top_p == 1`` disable those filters)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 512
    stop_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, sampling: Any, stop_token_ids: tuple[int, ...]) -> "Sampling":
        """From ``config.actor.sampling`` plus the end-of-turn token ids of the tokenizer."""
        return cls(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=tuple(stop_token_ids),
        )

    def with_budget(self, max_new_tokens: int) -> "Sampling":
        return Sampling(self.temperature, self.top_p, self.top_k, max_new_tokens, self.stop_token_ids)


@dataclass(frozen=True)
class Generation:
    """One sampled response. ``token_ids`` ends with the stop token when ``finish_reason == "stop"``."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    policy_version: int = field(default=0)
    """Weights version in place when the request started (0: the initial checkpoint, before any update).
    A request that spans an update is labelled with the older version: the conservative choice for the
    learner's staleness filter."""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.logprobs)} logprobs for {len(self.token_ids)} tokens")


class ReceivedWeightsLike(Protocol):
    """What ``rlef.common.weights`` hands over: a whole, checksummed version."""

    version: int
    tensors: dict[str, Any]


class GenerationBackend(abc.ABC):
    """An inference engine behind ``generate`` / ``load_weights``; see the module docstring for invariants."""

    version: int = 0
    """Weights version the engine holds: 0 is the checkpoint it started from."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        """Sample one response to ``prompt_ids``; concurrent calls are batched by the backend."""

    @abc.abstractmethod
    async def load_weights(self, received: ReceivedWeightsLike) -> None:
        """Apply a whole weights version between generation steps; raise WeightsError (nothing applied) if it
        does not fit the model. In-flight requests continue."""

    def busy_seconds(self) -> float:
        """Seconds the engine spent generating since start (for the busy-fraction metric)."""
        return 0.0

    async def close(self) -> None:
        """Release the engine (threads, worker processes)."""


def check_fits(
    received: ReceivedWeightsLike, shapes: dict[str, tuple[int, ...]], required: Iterable[str] | None = None
) -> None:
    """Raise WeightsError, naming the version and the first mismatches, unless ``received`` has no tensor that
    ``shapes`` lacks, every ``required`` one (default: every name of ``shapes``), and each of the shape
    ``shapes`` gives it. Checked before anything reaches the engine, so a bad version never touches the model."""
    from rlef.common.errors import WeightsError

    names = set(received.tensors)
    unknown = sorted(names - set(shapes))
    missing = sorted(set(shapes if required is None else required) - names)
    if unknown or missing:
        raise WeightsError(
            f"weights version {received.version} does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}"
        )
    for name, tensor in received.tensors.items():
        if tuple(tensor.shape) != tuple(shapes[name]):
            raise WeightsError(
                f"weights version {received.version}: {name} has shape {tuple(tensor.shape)}, model {tuple(shapes[name])}"
            )


def fitting_tensors(model: Any, received: ReceivedWeightsLike) -> dict[str, Any]:
    """``received``'s arrays as torch tensors, checked to fit ``model`` (:func:`check_fits`: every parameter
    present, no unknown name, every shape equal to the model's)."""
    import numpy as np
    import torch

    state = model.state_dict()
    check_fits(received, {name: tuple(t.shape) for name, t in state.items()}, required=dict(model.named_parameters()))
    return {name: value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            for name, value in received.tensors.items()}
