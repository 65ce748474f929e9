"""The transformers backend on the tiny model: behaviour log-probs against a teacher-forced forward pass,
weight loading (good and bad), the policy-lag gate, and whole episodes with real executor processes and a
weight update published mid-run through the real zmq weights transport."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from helpers.actor_support import ScriptedBackend, actor_config

from rlef.actor.backends.base import Sampling
from rlef.actor.backends.hf import HfBackend, teacher_forced_logprobs
from rlef.actor.episodes import EpisodeRunner
from rlef.actor.problem_stream import problem_stream
from rlef.actor.sinks import ListSink
from rlef.actor.weights_sync import WeightSync
from rlef.common.text import chat
from rlef.common.config import TransportConfig
from rlef.common.data.loaders import load_problems
from rlef.common.errors import WeightsError
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Rollout, encode, unpack_floats, unpack_ids
from rlef.common.protocol.transport import Transport
from rlef.common.weights.base import ReceivedWeights
from rlef.common.weights.zmq.hub import ZmqPublisher
from rlef.common.weights.zmq.receiver import ZmqReceiver


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HfBackend(str(tiny_model_dir), seed=1)


def _prompts(tokenizer, n):
    return [chat.first_prompt_ids(tokenizer, "Print the sum of two numbers. " * (1 + k)) for k in range(n)]


def test_batched_logprobs_match_a_teacher_forced_forward(backend, tokenizer):
    sampling = Sampling(max_new_tokens=24, stop_token_ids=(tokenizer.eos_token_id,))
    prompts = _prompts(tokenizer, 4)  # different lengths: left padding inside one batch

    async def go():
        return await asyncio.gather(*(backend.generate(p, sampling) for p in prompts))

    before = len(backend.batch_sizes)
    gens = asyncio.run(go())
    assert max(backend.batch_sizes[before:]) > 1  # concurrent requests were batched
    for prompt, gen in zip(prompts, gens):
        assert 1 <= len(gen.token_ids) <= 24 and len(gen.logprobs) == len(gen.token_ids)
        if gen.finish_reason == "stop":
            assert gen.token_ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in gen.token_ids[:-1]
        else:
            assert len(gen.token_ids) == 24
        ref = teacher_forced_logprobs(backend.model, prompt, gen.token_ids)
        assert gen.logprobs == pytest.approx(ref, abs=1e-4)


def test_logprobs_follow_the_sampling_distribution(backend, tokenizer):
    """Temperature and top-k change the distribution tokens are drawn from; the log-probs are under it."""
    sampling = Sampling(temperature=0.7, top_k=20, max_new_tokens=16, stop_token_ids=(tokenizer.eos_token_id,))
    prompt = _prompts(tokenizer, 1)[0]
    gen = asyncio.run(backend.generate(prompt, sampling))
    ids = torch.tensor([prompt + gen.token_ids])
    with torch.no_grad():
        logits = backend.model(ids).logits[0, len(prompt) - 1 : -1] / 0.7
    kth = logits.topk(20, dim=-1).values[:, -1:]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(gen.token_ids)[:, None])[:, 0]
    assert gen.logprobs == pytest.approx(ref.tolist(), abs=1e-4)


def test_load_weights_applies_and_rejects_what_does_not_fit(tiny_model_dir, tokenizer):
    backend = HfBackend(str(tiny_model_dir))
    state = {k: v.clone() for k, v in backend.model.state_dict().items()}
    bad_shape = dict(state, **{"lm_head.weight": torch.zeros(3, 3)})
    with pytest.raises(WeightsError, match="lm_head.weight"):
        asyncio.run(backend.load_weights(ReceivedWeights(version=1, tensors=bad_shape)))
    missing = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with pytest.raises(WeightsError, match="missing"):
        asyncio.run(backend.load_weights(ReceivedWeights(version=1, tensors=missing)))
    assert backend.version == 0
    assert torch.equal(backend.model.lm_head.weight, state["lm_head.weight"])
    uniform = dict(state, **{"lm_head.weight": torch.zeros_like(state["lm_head.weight"])})
    asyncio.run(backend.load_weights(ReceivedWeights(version=5, tensors=uniform)))
    assert backend.version == 5
    gen = asyncio.run(backend.generate(_prompts(tokenizer, 1)[0], Sampling(max_new_tokens=8, stop_token_ids=(tokenizer.eos_token_id,))))
    vocab = state["lm_head.weight"].shape[0]
    assert gen.policy_version == 5 and gen.logprobs == pytest.approx([-math.log(vocab)] * len(gen.token_ids), abs=1e-5)


def test_weight_sync_rejects_bad_versions_and_gates_on_lag(tokenizer):
    backend = ScriptedBackend(tokenizer, lambda text, turn: "x")
    hub = [0]
    sync = WeightSync(backend, receiver=None, max_policy_lag=1, hub_version=lambda: hub[0])

    class Unfit:
        version = 2
        tensors: dict = {}

    async def go():
        await asyncio.wait_for(sync.wait_fresh(), 1)  # no lag
        hub[0] = 3
        waiter = asyncio.create_task(sync.wait_fresh())
        await asyncio.sleep(0.2)
        assert not waiter.done()  # lag 3 > 1: no new episode
        assert await sync.apply(ReceivedWeights(version=2, tensors={}))  # lag 1: allowed again
        await asyncio.wait_for(waiter, 1)
        assert not await sync.apply(ReceivedWeights(version=1, tensors={}))  # older than what it holds

    asyncio.run(go())
    assert backend.version == 2 and sync.applied == [2]

    async def reject():
        bad = HfRejecting(tokenizer)
        s = WeightSync(bad, receiver=None, max_policy_lag=0)
        assert not await s.apply(ReceivedWeights(version=1, tensors={}))
        return s

    s = asyncio.run(reject())
    assert s.rejected and s.rejected[0][0] == 1 and s.backend.version == 0


class HfRejecting(ScriptedBackend):
    """A backend whose model never fits: load_weights raises like HfBackend does for a wrong tensor."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, lambda text, turn: "x")

    async def load_weights(self, received) -> None:
        raise WeightsError(f"weights version {received.version} does not fit")


class RecordingHf(HfBackend):
    """The real hf backend, also keeping every context it was asked to continue."""

    seen: list[list[int]]

    async def generate(self, prompt_ids, sampling):
        self.seen.append(list(prompt_ids))
        return await super().generate(prompt_ids, sampling)


@pytest.mark.slow
def test_episodes_with_a_weight_update_mid_run(tiny_model_dir, tokenizer, executor_service):
    """K=4 episodes on the tiny model with real executors; version 1 (a uniform LM head) is published through
    the real zmq weights transport after the first rollout: later turns record version 1 and their outputs
    are those of the new weights; every rollout is well-formed and token-exact."""
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=4", "actor.sampling.max_new_tokens=24")
    backend = RecordingHf(str(tiny_model_dir), seed=3)
    backend.seen = []
    vocab = backend.model.lm_head.weight.shape[0]
    uniform = {k: v.clone() for k, v in backend.model.state_dict().items()}
    uniform["lm_head.weight"].zero_()
    problems = load_problems("sample", split="train")

    async def go():
        sync_transport = Transport(TransportConfig())
        publisher = ZmqPublisher(sync_transport, "tcp://127.0.0.1:0", chunk_bytes=1 << 16)
        endpoint = publisher._sock.getsockopt_string(__import__("zmq").LAST_ENDPOINT)
        receiver = ZmqReceiver(sync_transport, endpoint, "actor-test", poll_interval_s=0.1)
        transport = Transport(TransportConfig(), asyncio=True)
        client = ExecutionClient(transport, executor_service.frontend, client_id="actor-hf", timeout_s=30)
        sink = ListSink()
        # The hub's version is the publisher's: with max_policy_lag 0, episodes that start after the publish
        # wait until version 1 is applied (the lag gate), so later episodes are certainly version 1.
        sync = WeightSync(backend, receiver, max_policy_lag=0, poll_timeout_s=0.05,
                          hub_version=lambda: max(publisher.version, 0))
        runner = EpisodeRunner(config, backend=backend, executor=client, tokenizer=tokenizer,
                               problems=problem_stream(problems, 0, 1, seed=0), sink=sink, actor_id="actor-0",
                               instance="t1", gate=sync)
        stop = asyncio.Event()
        sync_task = asyncio.create_task(sync.run(stop))

        async def publish_after_first():
            while not sink.records:
                await asyncio.sleep(0.05)
            publisher.publish(1, uniform)

        pub_task = asyncio.create_task(publish_after_first())
        try:
            await asyncio.wait_for(runner.run(episodes=12), 500)
        finally:
            stop.set()
            await asyncio.gather(sync_task, pub_task, return_exceptions=True)
            client.close()
            receiver.close()
            publisher.close()
            transport.close()
            sync_transport.close()
        return sink.records, runner, sync

    records, runner, sync = asyncio.run(go())
    assert runner.errors == [] and len(records) == 12 and sync.applied == [1]
    versions = [t.generation.policy_version for r in records for t in r.turns]
    assert 0 in versions and 1 in versions
    first = min(records, key=lambda r: int(r.rollout.rollout_id.rsplit("-", 1)[1]))
    last = max(records, key=lambda r: int(r.rollout.rollout_id.rsplit("-", 1)[1]))
    # The first episode ran before the update; the last one started after it (the gate held it until applied).
    assert first.rollout.turns[0].policy_version == 0 and last.rollout.turns[-1].policy_version == 1
    for record in records:
        rollout = decode(encode(record.rollout), Rollout)
        assert [t.policy_version for t in rollout.turns] == sorted(t.policy_version for t in rollout.turns)
        uniform_lp = -math.log(vocab)
        for turn, wire in zip(record.turns, rollout.turns):
            lps = unpack_floats(wire.logprobs)
            # Outputs follow the weights that made them: the uniform head gives log(1/V) to every token.
            is_uniform = all(abs(x - uniform_lp) < 1e-4 for x in lps)
            assert is_uniform == (turn.generation.policy_version == 1), (turn.generation.policy_version, lps[:4])
        # Token exactness: each prompt segment is the tokenizer's ids of its text, the engine saw exactly the
        # concatenation of the segments so far, and the whole decodes to the chat-template conversation.
        ids: list[int] = []
        messages = []
        for i, (turn, wire) in enumerate(zip(record.turns, rollout.turns)):
            prompt = [int(x) for x in unpack_ids(wire.prompt_ids)]
            if i == 0:
                assert prompt == chat.first_prompt_ids(tokenizer, turn.prompt_text)
            else:
                eot = [] if record.turns[i - 1].generation.finish_reason == "stop" else [tokenizer.eos_token_id]
                assert prompt == eot + chat.next_prompt_ids(tokenizer, turn.prompt_text)
            ids += prompt
            assert ids in backend.seen
            response = [int(x) for x in unpack_ids(wire.response_ids)]
            assert response == turn.generation.token_ids
            ids += response
            body = response[:-1] if turn.generation.finish_reason == "stop" else response
            messages += [{"role": "user", "content": turn.prompt_text},
                         {"role": "assistant", "content": tokenizer.decode(body, skip_special_tokens=False)}]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if record.turns[-1].generation.finish_reason != "stop":
            text += tokenizer.eos_token
        assert text == tokenizer.apply_chat_template(messages, tokenize=False)
        assert rollout.rollout_id.startswith("actor-0-t1-") and len(rollout.rewards) == len(rollout.turns)
    assert len({r.rollout.rollout_id for r in records}) == 12
