"""transformers backends (the CPU default).

``HfBackend`` is :class:`CachedHfBackend`: the prefix-cached, iteration-level batched engine of
:mod:`rlef.actor.backends.hf_engine` (each episode's KV cache is kept across its turns; decode steps are
shared by every running request). The earlier backend stays here as ``ChunkedHfBackend`` (the benchmark's
comparison): batched ``model.generate`` across concurrently waiting requests, described below. Both load
the checkpoint the same way (:func:`_load_model`) and check and copy new weights the same way
(:func:`_weights_copy`).

Iteration-level batching in chunks: every step generates at most ``chunk_tokens`` tokens for a batch made of
the unfinished requests plus every request that arrived meanwhile (same sampling settings, left-padded; the
context is prefilled again each step, which is cheap next to the decode steps for the models this backend
serves). Finished rows leave after at most one chunk and new episodes join at the next one, so a batch never
waits for its longest response the way one whole ``generate`` call would (``chunk_tokens=0`` does that).

Behaviour log-probs come from ``generate``'s processed scores (``output_scores``: the logits after the
temperature / top-k / top-p processors, i.e. the distribution tokens were drawn from), so they satisfy the
invariant stated in :mod:`rlef.actor.backends.base`. Greedy requests report the raw model log-probs.

Weights: ``load_weights`` takes the same lock the generation thread holds for a step, so a new version is
copied in strictly between two steps; queued and in-flight requests simply continue on the new weights (a
response that spans an update is labelled with the version of its first chunk, the older one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from rlef.actor.backends.base import Generation, GenerationBackend, ReceivedWeightsLike, Sampling, fitting_tensors
from rlef.actor.backends.hf_engine import DecodeEngine

log = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: Sampling
    future: asyncio.Future
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    version: int | None = None


def _load_model(model_path: str, *, dtype: str, device: str, seed: int, threads: int | None) -> Any:
    """The checkpoint as an eval-mode causal LM on ``device``, with neutral generation defaults."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)  # process-wide: the actor process runs one engine
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
    model.eval()
    # Neutral defaults: a checkpoint's generation_config.json (repetition_penalty, top_k, ...) must not
    # change the sampling distribution behind our back; every request passes its settings explicitly.
    model.generation_config = GenerationConfig()
    return model


def _weights_copy(model: Any, received: ReceivedWeightsLike) -> tuple[Callable[[], None], int]:
    """Check that ``received`` fits ``model`` (WeightsError, nothing copied, when not); returns the copy that
    writes it into the model (the caller runs it between two generation steps) and its tensor count."""
    import torch

    state = model.state_dict()
    tensors = fitting_tensors(model, received)

    def copy() -> None:
        with torch.no_grad():
            for name, tensor in tensors.items():
                state[name].copy_(tensor.to(state[name].dtype))

    return copy, len(tensors)


def teacher_forced_logprobs(model: Any, prompt_ids: list[int], response_ids: list[int], temperature: float = 1.0) -> list[float]:
    """log p(response_j | prompt, response_<j) under ``model`` (one unpadded forward; the test reference)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    return logp.gather(1, torch.tensor(response_ids, device=logp.device)[:, None])[:, 0].tolist()


class ChunkedHfBackend(GenerationBackend):
    """transformers ``generate`` in one worker thread, fed by an asyncio queue; see the module docstring."""

    def __init__(
        self, model_path: str, *, dtype: str = "float32", device: str = "cpu", seed: int = 0, max_batch: int = 64,
        threads: int | None = 1, chunk_tokens: int = 16,
    ):
        self.model = _load_model(model_path, dtype=dtype, device=device, seed=seed, threads=threads)
        self.device = device
        self.max_batch = max_batch
        self.version = 0
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._weights_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-weights")
        self.chunk_tokens = chunk_tokens
        self._waiting: list[_Request] = []
        self._wake: asyncio.Event | None = None
        self._server: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0.0
        self.batches = 0
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ public interface

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        if not prompt_ids:
            raise ValueError("empty prompt")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (the batcher task lives on one loop)
            self._loop = loop
            self._waiting = []
            self._wake = asyncio.Event()
            self._server = loop.create_task(self._serve(), name="hf-batcher")
        future = loop.create_future()
        self._waiting.append(_Request(list(prompt_ids), sampling, future))
        self._wake.set()
        return await future

    async def load_weights(self, received: ReceivedWeightsLike) -> None:
        await asyncio.get_running_loop().run_in_executor(self._weights_thread, self._load, received)

    def busy_seconds(self) -> float:
        return self._busy

    async def close(self) -> None:
        if self._server is not None and self._loop is asyncio.get_running_loop():
            self._server.cancel()
            try:
                await self._server
            except asyncio.CancelledError:
                pass
            self._server = None
        self._thread.shutdown(wait=True)
        self._weights_thread.shutdown(wait=True)

    # ------------------------------------------------------------------ batching

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            groups: dict[Sampling, list[_Request]] = {}
            for req in batch:
                if not req.future.done():
                    groups.setdefault(req.sampling, []).append(req)
            unfinished: list[_Request] = []
            for sampling, reqs in groups.items():
                longest = max(r.sampling.max_new_tokens - len(r.tokens) for r in reqs)
                step = min(self.chunk_tokens, longest) if self.chunk_tokens > 0 else longest
                contexts = [r.prompt_ids + r.tokens for r in reqs]
                try:
                    results = await loop.run_in_executor(self._thread, self._generate_batch, contexts, sampling.with_budget(step))
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, which raises it
                    for req in reqs:
                        if not req.future.done():
                            req.future.set_exception(exc)
                    continue
                for req, result in zip(reqs, results):
                    if self._advance(req, result):
                        unfinished.append(req)
            # Unfinished requests continue in the next step, together with everything that arrived meanwhile.
            self._waiting = unfinished + self._waiting

    @staticmethod
    def _advance(req: _Request, chunk: Generation) -> bool:
        """Append one chunk to ``req``; resolve it when done. True when it needs more tokens."""
        if req.version is None:
            req.version = chunk.policy_version
        room = req.sampling.max_new_tokens - len(req.tokens)
        req.tokens += chunk.token_ids[:room]
        req.logprobs += chunk.logprobs[:room]
        stopped = bool(req.tokens) and req.tokens[-1] in req.sampling.stop_token_ids
        if stopped or len(req.tokens) >= req.sampling.max_new_tokens:
            if not req.future.done():
                req.future.set_result(Generation(req.tokens, req.logprobs, "stop" if stopped else "length", req.version))
            return False
        return True

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling) -> list[Generation]:
        import torch
        from transformers import GenerationConfig

        with self._lock:
            start = time.perf_counter()
            version = self.version
            width = max(len(p) for p in prompts)
            pad = sampling.stop_token_ids[0] if sampling.stop_token_ids else 0
            input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for row, prompt in enumerate(prompts):
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            greedy = sampling.temperature <= 0
            config = GenerationConfig(
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                # Explicit "off" values: None would let transformers fill in its defaults (top_k=50).
                top_p=1.0 if greedy or sampling.top_p >= 1.0 else sampling.top_p,
                top_k=0 if greedy or sampling.top_k <= 0 else sampling.top_k,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=list(sampling.stop_token_ids) or None,
                pad_token_id=pad,
                output_scores=True,
                output_logits=True,
                return_dict_in_generate=True,
            )
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config
                )
            steps = out.logits if greedy else out.scores
            new_tokens = out.sequences[:, width:].cpu()
            logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1).cpu()
            chosen = logp.gather(2, new_tokens[:, : logp.shape[1], None])[:, :, 0]
            results = []
            stops = set(sampling.stop_token_ids)
            for row in range(len(prompts)):
                tokens = new_tokens[row].tolist()
                end = next((j + 1 for j, t in enumerate(tokens) if t in stops), None)
                reason = "stop" if end is not None else "length"
                end = end if end is not None else len(tokens)
                results.append(Generation(tokens[:end], chosen[row, :end].tolist(), reason, version))
            self._busy += time.perf_counter() - start
            self.batches += 1
            self.batch_sizes.append(len(prompts))
            return results

    # ------------------------------------------------------------------ weights

    def _load(self, received: ReceivedWeightsLike) -> None:
        copy, count = _weights_copy(self.model, received)
        with self._lock:
            copy()
            self.version = received.version
        log.info("hf backend: applied weights version %d (%d tensors)", received.version, count)


class CachedHfBackend(GenerationBackend):
    """The hf backend on :class:`DecodeEngine`: prefix-cached, iteration-level batched generation on transformers.

    ``chunk_tokens`` is accepted for config compatibility (``actor.hf_chunk_tokens`` sized the re-prefill
    chunks of the earlier whole-``generate`` batching) and has no effect: rows join and leave at every step."""

    def __init__(
        self, model_path: str, *, dtype: str = "float32", device: str = "cpu", seed: int = 0, max_batch: int = 64,
        threads: int | None = 1, chunk_tokens: int = 0, prefix_cache_tokens: int = 1 << 16,
    ):
        self.model = _load_model(model_path, dtype=dtype, device=device, seed=seed, threads=threads)
        self.device = device
        self.chunk_tokens = chunk_tokens
        self.engine = DecodeEngine(self.model, device=device, max_batch=max_batch, prefix_cache_tokens=prefix_cache_tokens)
        self._weights_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-weights")

    @property
    def version(self) -> int:  # type: ignore[override]
        return self.engine.version

    @property
    def batch_sizes(self) -> list[int]:
        return self.engine.batch_sizes

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        return await self.engine.generate(prompt_ids, sampling)

    async def load_weights(self, received: ReceivedWeightsLike) -> None:
        await asyncio.get_running_loop().run_in_executor(self._weights_thread, self._load, received)

    def busy_seconds(self) -> float:
        return self.engine.busy_s

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
        self._weights_thread.shutdown(wait=True)

    def _load(self, received: ReceivedWeightsLike) -> None:
        copy, count = _weights_copy(self.model, received)
        self.engine.apply_weights(copy, received.version)
        log.info("hf backend: applied weights version %d (%d tensors)", received.version, count)


HfBackend = CachedHfBackend  # the default

__all__ = ["CachedHfBackend", "ChunkedHfBackend", "HfBackend", "teacher_forced_logprobs"]
