"""transformers backend (the CPU default): batched ``model.generate`` across concurrently waiting requests.

Requests queue up while a batch runs; when the engine frees, every queued request with the same sampling
settings goes into the next batch (left-padded). This is static batching, not vLLM's continuous batching: a
batch ends when its longest response does, which is acceptable for the CPU tiny-model runs it serves.

Behaviour log-probs come from ``generate``'s processed scores (``output_scores``: the logits after the
temperature / top-k / top-p processors, i.e. the distribution tokens were drawn from), so they satisfy the
invariant stated in :mod:`rlef.actor.backends.base`. Greedy requests report the raw model log-probs.

Weights: ``load_weights`` takes the same lock the generation thread holds for a batch, so a new version is
copied in strictly between two batches; queued and in-flight episodes simply continue on the new weights.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlef.actor.backends.base import Generation, GenerationBackend, ReceivedWeightsLike, Sampling
from rlef.common.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: Sampling
    future: asyncio.Future


def _as_tensor(value: Any):
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.ascontiguousarray(value))


def teacher_forced_logprobs(model: Any, prompt_ids: list[int], response_ids: list[int], temperature: float = 1.0) -> list[float]:
    """log p(response_j | prompt, response_<j) under ``model`` (one unpadded forward; the test reference)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    return logp.gather(1, torch.tensor(response_ids, device=logp.device)[:, None])[:, 0].tolist()


class HfBackend(GenerationBackend):
    """transformers ``generate`` in one worker thread, fed by an asyncio queue; see the module docstring."""

    def __init__(self, model_path: str, *, dtype: str = "float32", device: str = "cpu", seed: int = 0, max_batch: int = 64):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        # Neutral defaults: a checkpoint's generation_config.json (repetition_penalty, top_k, ...) must not
        # change the sampling distribution behind our back; every request passes its settings explicitly.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig()
        self.device = device
        self.max_batch = max_batch
        self.version = 0
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._weights_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-weights")
        self._queue: asyncio.Queue[_Request] | None = None
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
            self._queue = asyncio.Queue()
            self._server = loop.create_task(self._serve(), name="hf-batcher")
        future = loop.create_future()
        await self._queue.put(_Request(list(prompt_ids), sampling, future))
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
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            while not self._queue.empty() and len(pending) < self.max_batch:
                pending.append(self._queue.get_nowait())
            groups: dict[Sampling, list[_Request]] = {}
            for req in pending:
                groups.setdefault(req.sampling, []).append(req)
            for sampling, reqs in groups.items():
                live = [r for r in reqs if not r.future.done()]
                if not live:
                    continue
                try:
                    results = await loop.run_in_executor(self._thread, self._generate_batch, [r.prompt_ids for r in live], sampling)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, which raises it
                    for req in live:
                        if not req.future.done():
                            req.future.set_exception(exc)
                    continue
                for req, result in zip(live, results):
                    if not req.future.done():
                        req.future.set_result(result)

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
        import torch

        state = self.model.state_dict()
        params = dict(self.model.named_parameters())
        tensors = {name: _as_tensor(value) for name, value in received.tensors.items()}
        unknown = sorted(set(tensors) - set(state))
        missing = sorted(set(params) - set(tensors))
        if unknown or missing:
            raise WeightsError(
                f"weights version {received.version} does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}"
            )
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(state[name].shape):
                raise WeightsError(
                    f"weights version {received.version}: {name} has shape {tuple(tensor.shape)}, model {tuple(state[name].shape)}"
                )
        with self._lock, torch.no_grad():
            for name, tensor in tensors.items():
                state[name].copy_(tensor.to(state[name].dtype))
            self.version = received.version
        log.info("hf backend: applied weights version %d (%d tensors)", received.version, len(tensors))
