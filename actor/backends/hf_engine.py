"""A continuous-batching decode engine over a transformers causal LM, with a per-episode prefix cache.

Why it exists: an episode's turn t+1 re-sends the whole conversation (turn t's context + response + the
feedback). Re-reading it every turn dominated CPU generation (prefill of 150-700 tokens per turn against
20-48 decode steps), and batching whole ``generate`` calls made a batch wait for its longest row. Here:

- **Prefix cache**: when a request finishes, the KV cache of everything the model has read (its context and
  all sampled tokens but the last, which was never fed) is kept under those token ids. A new request whose
  context starts with a kept entry reads only the rest ("suffix"), then the entry leaves the store (the
  episode moved on; its next state is stored when this request ends). Entries are tied to the weights
  version they were computed with: after ``load_weights`` no old entry is reused. The store is bounded in
  tokens and evicts the least recently stored entry.
- **Iteration-level batching**: one worker thread loops over decode steps of all running rows; between two
  steps, finished rows leave and newly arrived requests join (after their own, unpadded prefill). Rows of a
  decode step have different lengths: their caches are left-padded to a common width with zeros, masked out,
  and each row gets its own position ids, so a row's numbers do not depend on who shares its batch (up to
  float rounding of batched matmuls).
- **Behaviour log-probs** (the invariant in :mod:`rlef.actor.backends.base`): each token is drawn from the
  logits after transformers' own temperature / top-k / top-p warpers (the ones ``generate`` applies, in its
  order), and its log-prob is read from the log-softmax of those same processed logits. Greedy rows take the
  argmax and report the raw model log-probs.

Weights: ``apply_weights`` runs under the lock the worker holds for one iteration (prefills + one decode
step), so a new version lands strictly between two steps. Rows in flight keep their cache (computed with the
older weights, like vLLM's running requests) and are labelled with the version they started under.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rlef.actor.backends.base import Generation, GenerationBackend, ReceivedWeightsLike, Sampling, fitting_tensors

log = logging.getLogger(__name__)

KV = list[tuple[Any, Any]]  # per layer (keys, values), each [1, kv_heads, length, head_dim]


class EngineError(RuntimeError):
    """The engine could not serve a request (model forward failed, engine closed); names the request."""


@dataclass
class _Row:
    prompt_ids: list[int]
    sampling: Sampling
    deliver: Callable[[Generation | BaseException], None]
    cancelled: Callable[[], bool]
    version: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    length: int = 0  # tokens the cache holds for this row (context + tokens fed so far)


@dataclass
class _Entry:
    ids: list[int]
    kv: KV
    version: int


class PrefixCache:
    """Finished requests' KV caches keyed by the token ids they cover; bounded in tokens (oldest out first)."""

    def __init__(self, max_tokens: int, max_bytes: int = 1 << 30):
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes  # entries of episodes that ended are never taken: bound what they hold
        self._entries: list[_Entry] = []
        self._tokens = 0
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, prompt_ids: list[int], version: int) -> _Entry | None:
        """The longest kept entry of ``version`` that is a strict prefix of ``prompt_ids``, removed from the store.

        Strict: at least one token must remain to be read, since its logits are what the first sample needs."""
        best: _Entry | None = None
        n = len(prompt_ids)
        for entry in self._entries:
            m = len(entry.ids)
            if entry.version == version and m < n and (best is None or m > len(best.ids)) and prompt_ids[:m] == entry.ids:
                best = entry
        if best is None:
            self.misses += 1
            return None
        self._entries.remove(best)
        self._tokens -= len(best.ids)
        self._bytes -= _nbytes(best.kv)
        self.hits += 1
        self.reused_tokens += len(best.ids)
        return best

    def put(self, ids: list[int], kv: KV, version: int) -> None:
        if len(ids) > self.max_tokens or not ids:
            return
        self._entries.append(_Entry(ids, kv, version))
        self._tokens += len(ids)
        self._bytes += _nbytes(kv)
        while self._entries and (self._tokens > self.max_tokens or self._bytes > self.max_bytes):
            old = self._entries.pop(0)
            self._tokens -= len(old.ids)
            self._bytes -= _nbytes(old.kv)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0
        self._bytes = 0


def _nbytes(kv: KV) -> int:
    return sum(getattr(t, "nbytes", 0) for pair in kv for t in pair)


class _Batch:
    """The running rows' caches as one left-padded tensor per layer (rebuilt only when rows join or leave)."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.pads: list[int] = []
        self.width = 0
        self.cache: Any = None  # the DynamicCache over keys/values; None after a join/leave (rebuilt once)

    def add(self, row: _Row, kv: KV) -> None:
        import torch

        length = kv[0][0].shape[2]
        if not self.rows:
            self.rows, self.pads, self.width, self.cache = [row], [0], length, None
            self.keys = [k for k, _ in kv]
            self.values = [v for _, v in kv]
            return
        if length > self.width:  # widen everyone else on the left
            grow = length - self.width
            self.keys = [_pad_left(k, grow) for k in self.keys]
            self.values = [_pad_left(v, grow) for v in self.values]
            self.pads = [p + grow for p in self.pads]
            self.width = length
        extra = self.width - length
        self.cache = None
        self.keys = [torch.cat([k, _pad_left(rk, extra)], 0) for k, (rk, _) in zip(self.keys, kv)]
        self.values = [torch.cat([v, _pad_left(rv, extra)], 0) for v, (_, rv) in zip(self.values, kv)]
        self.rows.append(row)
        self.pads.append(extra)

    def row_kv(self, i: int) -> KV:
        """Row ``i``'s own cache, without padding (a copy: the batch tensors are dropped or rebuilt later)."""
        p = self.pads[i]
        return [(k[i : i + 1, :, p:].clone(), v[i : i + 1, :, p:].clone()) for k, v in zip(self.keys, self.values)]

    def keep(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__()
            return
        index = torch.tensor(keep)
        self.cache = None
        self.rows = [self.rows[i] for i in keep]
        self.pads = [self.pads[i] for i in keep]
        trim = min(self.pads)  # columns that are padding in every remaining row
        self.keys = [k.index_select(0, index)[:, :, trim:] for k in self.keys]
        self.values = [v.index_select(0, index)[:, :, trim:] for v in self.values]
        self.pads = [p - trim for p in self.pads]
        self.width -= trim


def _pad_left(t: Any, n: int) -> Any:
    import torch

    if n == 0:
        return t
    # Zeros, not garbage: masked keys get zero weight, and 0 * a finite value stays 0 (NaN would not).
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3]), t], 2)


def _warpers(sampling: Sampling) -> list[Any]:
    """transformers' sampling warpers, in the order ``generate`` applies them (utils._get_logits_processor)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    return out


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
        self._inbox: queue.Queue[_Row | None] = queue.Queue()
        self._batch = _Batch()
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

        self.submit(_Row(list(prompt_ids), sampling, deliver, future.cancelled))
        return await future

    def submit(self, row: _Row) -> None:
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
                    self._batch = _Batch()
                self.busy_s += time.perf_counter() - start
        error = EngineError("decode engine closed with the request in flight")
        for row in self._batch.rows + self._drain(block=False):
            row.deliver(error)

    def _drain(self, block: bool) -> list[_Row]:
        rows: list[_Row] = []
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

    def _iteration(self, joiners: list[_Row]) -> None:
        import torch

        batch = self._batch
        # Cancelled rows (their episode was cancelled) leave before they cost a step.
        batch.keep([i for i, r in enumerate(batch.rows) if not r.cancelled()])
        for row in joiners:
            if row.cancelled():
                continue
            row.version = self.version
            kv, logits = self._prefill(row)
            token, logp = self._sample(logits[None], [row])
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
        tokens, logps = self._sample(out.logits[:, -1], rows)
        keep: list[int] = []
        for i, row in enumerate(rows):
            row.length += 1
            if self._advance(row, int(tokens[i]), float(logps[i])):
                keep.append(i)
            else:
                self._finish(row, batch.row_kv(i))
        batch.keep(keep)

    def _prefill(self, row: _Row) -> tuple[KV, Any]:
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

    def _sample(self, logits: Any, rows: list[_Row]) -> tuple[Any, Any]:
        """One token per row from its processed distribution, and that token's log-prob under it."""
        import torch

        logits = logits.float()
        tokens = torch.empty(len(rows), dtype=torch.long)
        logps = torch.empty(len(rows))
        groups: dict[tuple[float, int, float], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.sampling.temperature, r.sampling.top_k, r.sampling.top_p), []).append(i)
        for (temperature, _, _), index in groups.items():
            sub = logits[index]
            if temperature <= 0:
                chosen = sub.argmax(-1)
                logp = torch.log_softmax(sub, -1)
            else:
                scores = sub
                for warper in _warpers(rows[index[0]].sampling):
                    scores = warper(None, scores)
                chosen = torch.multinomial(torch.softmax(scores, -1), 1)[:, 0]
                logp = torch.log_softmax(scores, -1)
            tokens[index] = chosen.cpu()
            logps[index] = logp.gather(1, chosen[:, None])[:, 0].cpu()
        return tokens, logps

    @staticmethod
    def _advance(row: _Row, token: int, logp: float) -> bool:
        """Append one sampled token; True while the row needs more."""
        row.tokens.append(token)
        row.logprobs.append(logp)
        return token not in row.sampling.stop_token_ids and len(row.tokens) < row.sampling.max_new_tokens

    def _finish(self, row: _Row, kv: KV) -> None:
        stopped = row.tokens[-1] in row.sampling.stop_token_ids
        # The cache holds the context and every sampled token but the last (sampled, never fed).
        self.cache.put(row.prompt_ids + row.tokens[:-1], kv, row.version)
        row.deliver(Generation(row.tokens, row.logprobs, "stop" if stopped else "length", row.version))


class CachedHfBackend(GenerationBackend):
    """The hf backend on :class:`DecodeEngine`: prefix-cached, iteration-level batched generation on transformers.

    ``chunk_tokens`` is accepted for config compatibility (``actor.hf_chunk_tokens`` sized the re-prefill
    chunks of the earlier whole-``generate`` batching) and has no effect: rows join and leave at every step."""

    def __init__(
        self, model_path: str, *, dtype: str = "float32", device: str = "cpu", seed: int = 0, max_batch: int = 64,
        threads: int | None = 1, chunk_tokens: int = 0, prefix_cache_tokens: int = 1 << 16,
    ):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)  # process-wide: the actor process runs one engine
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        # Neutral defaults: a checkpoint's generation_config.json must not change anything behind our back.
        self.model.generation_config = GenerationConfig()
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
        import torch

        state = self.model.state_dict()
        tensors = fitting_tensors(self.model, received)
        def copy() -> None:
            with torch.no_grad():
                for name, tensor in tensors.items():
                    state[name].copy_(tensor.to(state[name].dtype))

        self.engine.apply_weights(copy, received.version)
        log.info("hf backend: applied weights version %d (%d tensors)", received.version, len(tensors))

