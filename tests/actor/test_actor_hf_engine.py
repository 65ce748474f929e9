"""The prefix-cached, iteration-level batched hf engine on the tiny model: behaviour log-probs against a
teacher-forced forward pass across turns that reuse a cache, greedy tokens equal to transformers' own
``generate``, rows joining a running batch between decode steps, cache invalidation on new weights, and the
sampling warpers (temperature, top-k, top-p) the log-probs are read under."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from rlef.actor.backends.base import Sampling
from rlef.actor.backends.hf import CachedHfBackend, teacher_forced_logprobs
from rlef.actor.backends.hf_prefix_cache import PrefixCache
from rlef.common.text import chat
from rlef.common.weights.base import ReceivedWeights


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return CachedHfBackend(str(tiny_model_dir), seed=1)


def _prompts(tokenizer, n):
    return [chat.first_prompt_ids(tokenizer, "Print the sum of two numbers. " * (1 + k)) for k in range(n)]


def _feedback(tokenizer, k):
    return chat.next_prompt_ids(tokenizer, f"Your code failed test {k}: expected 3, got 4.")


def test_multi_turn_reuses_the_cache_and_logprobs_match_teacher_forcing(backend, tokenizer):
    """Three turns of four concurrent episodes: turns 2-3 read only their new tokens, and every response's
    log-probs equal a fresh unpadded forward over the whole conversation."""
    eos = tokenizer.eos_token_id
    sampling = Sampling(max_new_tokens=20, stop_token_ids=(eos,))
    contexts = _prompts(tokenizer, 4)
    engine = backend.engine
    prev: list = []

    async def turn(ctx):
        return await backend.generate(ctx, sampling)

    for t in range(3):
        hits, prefill = engine.cache.hits, engine.prefill_tokens
        steps = len(engine.batch_sizes)
        gens = asyncio.run(_gather(turn, contexts))
        assert max(engine.batch_sizes[steps:]) > 1  # concurrent requests shared decode steps
        for ctx, gen in zip(contexts, gens):
            assert 1 <= len(gen.token_ids) <= 20 and len(gen.logprobs) == len(gen.token_ids)
            if gen.finish_reason == "stop":
                assert gen.token_ids[-1] == eos and eos not in gen.token_ids[:-1]
            else:
                assert len(gen.token_ids) == 20
            ref = teacher_forced_logprobs(backend.model, ctx, gen.token_ids)
            assert gen.logprobs == pytest.approx(ref, abs=1e-4)
        if t > 0:
            assert engine.cache.hits - hits == 4
            # Only the last response token (never fed) and the new feedback segment were read.
            fresh = sum(1 + len(_feedback(tokenizer, t)) + (gen.finish_reason != "stop") for gen in prev)
            assert engine.prefill_tokens - prefill == fresh
        prev = gens
        contexts = [ctx + g.token_ids + ([] if g.finish_reason == "stop" else [eos]) + _feedback(tokenizer, t + 1)
                    for ctx, g in zip(contexts, gens)]


async def _gather(fn, items):
    return await asyncio.gather(*(fn(x) for x in items))


def test_greedy_tokens_equal_transformers_generate(backend, tokenizer):
    """Greedy decoding through a batch of rows of different lengths, then a second turn from the cache,
    gives exactly the tokens of transformers' generate on each conversation alone."""
    sampling = Sampling(temperature=0.0, max_new_tokens=16, stop_token_ids=())
    prompts = _prompts(tokenizer, 3)

    def reference(ctx):
        out = backend.model.generate(torch.tensor([ctx]), do_sample=False, max_new_tokens=16, min_new_tokens=16,
                                     pad_token_id=0, eos_token_id=None)
        return out[0, len(ctx):].tolist()

    gens = asyncio.run(_gather(lambda p: backend.generate(p, sampling), prompts))
    for p, g in zip(prompts, gens):
        assert g.token_ids == reference(p) and g.finish_reason == "length"
        ref = teacher_forced_logprobs(backend.model, p, g.token_ids)
        assert g.logprobs == pytest.approx(ref, abs=1e-4)
    second = [p + g.token_ids + _feedback(tokenizer, 1) for p, g in zip(prompts, gens)]
    hits = backend.engine.cache.hits
    gens2 = asyncio.run(_gather(lambda p: backend.generate(p, sampling), second))
    assert backend.engine.cache.hits - hits == 3
    for p, g in zip(second, gens2):
        assert g.token_ids == reference(p)


def test_a_request_joins_a_running_batch_between_steps(backend, tokenizer):
    """A short request sent while a long one decodes finishes long before it: no waiting for the batch."""
    long = Sampling(max_new_tokens=200, stop_token_ids=())
    short = Sampling(max_new_tokens=3, stop_token_ids=())
    a, b = _prompts(tokenizer, 2)

    async def go():
        first = asyncio.create_task(backend.generate(a, long))
        while backend.engine.decode_steps == 0 or not backend.engine._batch.rows:
            await asyncio.sleep(0.001)
        steps = backend.engine.decode_steps
        g = await backend.generate(b, short)
        assert not first.done()  # the long row is still decoding
        joined_at = steps
        return g, await first, joined_at

    g, g_long, _ = asyncio.run(go())
    assert len(g.token_ids) == 3 and len(g_long.token_ids) == 200
    assert 2 in backend.engine.batch_sizes  # the two rows shared decode steps
    for p, gen in ((b, g), (a, g_long)):
        assert gen.logprobs == pytest.approx(teacher_forced_logprobs(backend.model, p, gen.token_ids), abs=1e-4)


def test_warpers_shape_the_logprobs(backend, tokenizer):
    """Temperature, top-k and top-p change the distribution tokens are drawn from; the log-probs are under it."""
    prompt = _prompts(tokenizer, 1)[0]
    sampling = Sampling(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=16, stop_token_ids=(tokenizer.eos_token_id,))
    gen = asyncio.run(backend.generate(prompt, sampling))
    with torch.no_grad():
        logits = backend.model(torch.tensor([prompt + gen.token_ids])).logits[0, len(prompt) - 1 : -1] / 0.7
    kth = logits.topk(20, dim=-1).values[:, -1:]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    probs, order = torch.softmax(logits, -1).sort(-1)
    drop = probs.cumsum(-1) <= 1 - 0.9  # transformers' top-p: drop the low tail whose mass is <= 1 - p
    logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(gen.token_ids)[:, None])[:, 0]
    assert gen.logprobs == pytest.approx(ref.tolist(), abs=1e-4)
    assert all(math.isfinite(x) for x in gen.logprobs)


def test_new_weights_invalidate_the_cache(tiny_model_dir, tokenizer):
    """After load_weights no entry computed with the old weights is reused, and outputs follow the new ones."""
    backend = CachedHfBackend(str(tiny_model_dir), seed=2)
    sampling = Sampling(max_new_tokens=8, stop_token_ids=())
    prompt = _prompts(tokenizer, 1)[0]
    g = asyncio.run(backend.generate(prompt, sampling))
    assert len(backend.engine.cache) == 1
    state = {k: v.clone() for k, v in backend.model.state_dict().items()}
    state["lm_head.weight"].zero_()
    asyncio.run(backend.load_weights(ReceivedWeights(version=3, tensors=state)))
    assert len(backend.engine.cache) == 0
    hits = backend.engine.cache.hits
    g2 = asyncio.run(backend.generate(prompt + g.token_ids + _feedback(tokenizer, 1), sampling))
    assert backend.engine.cache.hits == hits and g2.policy_version == 3
    vocab = state["lm_head.weight"].shape[0]
    assert g2.logprobs == pytest.approx([-math.log(vocab)] * 8, abs=1e-5)
    asyncio.run(backend.close())


def test_prefix_cache_takes_the_longest_strict_prefix_of_the_version_and_stays_bounded():
    cache = PrefixCache(max_tokens=11)
    cache.put([1, 2], ["a"], 0)
    cache.put([1, 2, 3, 4], ["b"], 0)
    cache.put([1, 2, 3, 4, 5], ["c"], 1)
    assert cache.take([1, 2, 3, 4], 0).kv == ["a"]  # [1,2,3,4] itself is not strict
    assert cache.take([1, 2, 3, 4, 9], 0).kv == ["b"]
    assert cache.take([1, 2, 3, 4, 5, 6], 0) is None  # the version-1 entry is not taken for version 0
    cache.put(list(range(7)), ["d"], 1)  # 5 + 7 tokens > 11: the oldest goes
    assert len(cache) == 1 and cache.take(list(range(8)), 1).kv == ["d"]


def test_prefix_cache_is_bounded_in_bytes_too():
    kv = [(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4))]  # 640 bytes
    cache = PrefixCache(max_tokens=1 << 20, max_bytes=1500)
    cache.put([1], kv, 0)
    cache.put([2], kv, 0)
    cache.put([3], kv, 0)  # 1920 bytes > 1500: the oldest goes
    assert len(cache) == 2 and cache.take([1, 9], 0) is None and cache.take([3, 9], 0) is not None
