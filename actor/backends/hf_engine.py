"""A continuous-batching decode engine over a transformers causal LM, with a per-episode prefix cache.

Why it exists: an episode's turn t+1 re-sends the whole conversation (turn t's context + response + the
feedback). Re-reading it every turn dominated CPU generation (prefill of 150-700 tokens per turn against
20-48 decode steps), and batching whole ``generate`` calls made a batch wait for its longest row. Here:

- **Prefix cache** (:mod:`rlef.actor.backends.hf_prefix_cache`): a finished request's KV cache is kept under
  the token ids it covers, and the episode's next turn reads only what is new. Entries are tied to the
  weights version they were computed with.
- **Iteration-level batching**: one worker thread loops over decode steps of all running rows; between two
  steps, finished rows leave and newly arrived requests join (after their own, unpadded prefill). The
  running rows' caches are one left-padded batch (:mod:`rlef.actor.backends.hf_decode_batch`).
- **Behaviour log-probs** (:mod:`rlef.actor.backends.hf_sampling`): each token is drawn from, and its log-prob
  read from, the logits after transformers' own temperature / top-k / top-p warpers.

Weights: ``apply_weights`` runs under the lock the worker holds for one iteration (prefills + one decode
step), so a new version lands strictly between two steps. Rows in flight keep their cache (computed with the
older weights, like vLLM's running requests) and are labelled with the version they started under. The
:class:`~rlef.common.errors.WeightsError`-checked backend around this engine is
:class:`rlef.actor.backends.hf.CachedHfBackend`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable

from rlef.actor.backends.base import Generation, Sampling
from rlef.actor.backends.hf_decode_batch import DecodeBatch, Row
from rlef.actor.backends.hf_prefix_cache import KV, PrefixCache
from rlef.actor.backends.hf_sampling import sample_tokens

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine could not serve a request (model forward failed, engine closed); names the request."""


class DecodeEngine:
    """The worker thread and its state; thread-safe ``submit`` from any event loop. See the module docstring."""

    def __init__(self, model: Any, *, device: str = "cpu", max_batch: int = 64, prefix_cache_tokens: int = 1 << 16):
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.cache = PrefixCache(prefix_cache_tokens)
        self.version = 0
        self.lock = threading.Lock()  # held for one iteration; weights are applied between iterations
        self._weights_waiting = threading.Event()
        self._inbox: queue.Queue[Row | None] = queue.Queue()
        self._batch = DecodeBatch()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.busy_s = 0.0
        self.decode_steps = 0
        self.prefill_tokens = 0
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ public

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        """Sample one response; resolves on the caller's event loop."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def deliver(result: Generation | BaseException) -> None:
            def settle() -> None:
                if future.done():
                    return
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the caller's loop is gone: nobody is waiting any more
                pass

        self.submit(Row(list(prompt_ids), sampling, deliver, future.cancelled))
        return await future

    def submit(self, row: Row) -> None:
        if self._closed:
            raise EngineError("decode engine is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hf-decode", daemon=True)
            self._thread.start()
        self._inbox.put(row)

    def apply_weights(self, copy: Callable[[], None], version: int) -> None:
        """Run ``copy`` (writes the new tensors into the model) strictly between two iterations."""
        self._weights_waiting.set()
        try:
            with self.lock:
                copy()
                self.version = version
                self.cache.clear()  # entries of older versions would never be taken; free their memory now
        finally:
            self._weights_waiting.clear()

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)  # grad mode is per thread
        while not self._closed:
            joiners = self._drain(block=not self._batch.rows)
            if self._closed:
                break
            while self._weights_waiting.is_set():  # let a waiting weights copy in (Lock is not fair)
                time.sleep(0.0005)
            with self.lock:
                start = time.perf_counter()
                try:
                    self._iteration(joiners)
                except Exception as exc:  # noqa: BLE001 - every affected caller gets it, the engine goes on
                    log.exception("hf decode engine: iteration failed")
                    error = EngineError(f"hf decode step failed with {len(self._batch.rows) + len(joiners)} rows: {exc!r}")
                    for row in self._batch.rows + joiners:
                        row.deliver(error)
                    self._batch = DecodeBatch()
                self.busy_s += time.perf_counter() - start
        error = EngineError("decode engine closed with the request in flight")
        for row in self._batch.rows + self._drain(block=False):
            row.deliver(error)

    def _drain(self, block: bool) -> list[Row]:
        rows: list[Row] = []
        room = self.max_batch - len(self._batch.rows)
        try:
            if block:
                item = self._inbox.get(timeout=0.5)
                if item is None:
                    return rows
                rows.append(item)
            while len(rows) < room:
                item = self._inbox.get_nowait()
                if item is None:
                    self._closed = True
                    break
                rows.append(item)
        except queue.Empty:
            pass
        return rows

    def _iteration(self, joiners: list[Row]) -> None:
        import torch

        batch = self._batch
        # Cancelled rows (their episode was cancelled) leave before they cost a step.
        batch.keep([i for i, r in enumerate(batch.rows) if not r.cancelled()])
        for row in joiners:
            if row.cancelled():
                continue
            row.version = self.version
            kv, logits = self._prefill(row)
            token, logp = sample_tokens(logits[None], [row])
            if self._advance(row, int(token[0]), float(logp[0])):
                batch.add(row, kv)
            else:
                self._finish(row, kv)
        if not batch.rows:
            return
        from transformers import DynamicCache

        rows = batch.rows
        n = len(rows)
        ids = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[r.length] for r in rows], device=self.device)
        mask = torch.ones(n, batch.width + 1, dtype=torch.long, device=self.device)
        for i, p in enumerate(batch.pads):
            mask[i, :p] = 0
        if batch.cache is None:  # one copy per change of the batch's rows; steps in between append in place
            batch.cache = DynamicCache(ddp_cache_data=list(zip(batch.keys, batch.values)))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=batch.cache,
                         use_cache=True)
        batch.keys = [layer.keys for layer in out.past_key_values.layers]
        batch.values = [layer.values for layer in out.past_key_values.layers]
        batch.width += 1
        self.decode_steps += 1
        self.batch_sizes.append(n)
        tokens, logps = sample_tokens(out.logits[:, -1], rows)
        keep: list[int] = []
        for i, row in enumerate(rows):
            row.length += 1
            if self._advance(row, int(tokens[i]), float(logps[i])):
                keep.append(i)
            else:
                self._finish(row, batch.row_kv(i))
        batch.keep(keep)

    def _prefill(self, row: Row) -> tuple[KV, Any]:
        """Read the part of the row's context no kept cache covers; its KV and the next-token logits."""
        import torch
        from transformers import DynamicCache

        entry = self.cache.take(row.prompt_ids, self.version)
        start = len(entry.ids) if entry is not None else 0
        suffix = row.prompt_ids[start:]
        cache = DynamicCache(ddp_cache_data=entry.kv) if entry is not None else DynamicCache()
        ids = torch.tensor([suffix], device=self.device)
        positions = torch.arange(start, start + len(suffix), device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
        self.prefill_tokens += len(suffix)
        row.length = len(row.prompt_ids)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return kv, out.logits[0, -1]
    @staticmethod
    def _advance(row: Row, token: int, logp: float) -> bool:
        """Append one sampled token; True while the row needs more."""
        row.tokens.append(token)
        row.logprobs.append(logp)
        return token not in row.sampling.stop_token_ids and len(row.tokens) < row.sampling.max_new_tokens

    def _finish(self, row: Row, kv: KV) -> None:
        stopped = row.tokens[-1] in row.sampling.stop_token_ids
        # The cache holds the context and every sampled token but the last (sampled, never fed).
        self.cache.put(row.prompt_ids + row.tokens[:-1], kv, row.version)
        row.deliver(Generation(row.tokens, row.logprobs, "stop" if stopped else "length", row.version))
