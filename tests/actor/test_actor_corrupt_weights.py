"""A hub (tests/helpers/weights_hub.py) that serves a weights version whose chunks are corrupt: the actor never applies it (the receiver's
checksum refuses it), keeps its version, and keeps producing rollouts with the real executor service."""

from __future__ import annotations

import asyncio

import pytest
import torch
from helpers.actor_support import ScriptedBackend, actor_config
from helpers.weights_hub import ScriptedHub

from rlef.actor.episodes import EpisodeRunner
from rlef.actor.problem_stream import problem_stream
from rlef.actor.sinks import ListSink
from rlef.actor.weights_sync import WeightSync
from rlef.common.config import TransportConfig
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.transport import Transport
from rlef.common.weights.packing import pack
from rlef.common.weights.zmq.receiver import ZmqReceiver
from rlef.common.weights.zmq.wire import encode_chunk

pytestmark = pytest.mark.slow


def flip_first_byte(version: int, index: int, data: bytes) -> bytes:
    return encode_chunk(version, index, bytes([data[0] ^ 0xFF]) + data[1:])


def test_corrupt_weights_are_never_applied_and_episodes_go_on(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=2", "actor.max_turns=1")
    problems = load_problems("sample", split="train")

    async def go():
        sync_transport = Transport(TransportConfig())
        packed = pack(1, {"w": torch.arange(4096, dtype=torch.float32)}, 4096)
        hub = ScriptedHub(sync_transport, "tcp://127.0.0.1:0", packed, flip_first_byte)
        receiver = ZmqReceiver(sync_transport, hub.endpoint, "actor-corrupt", poll_interval_s=0.1)
        transport = Transport(TransportConfig(), asyncio=True)
        client = ExecutionClient(transport, executor_service.frontend, client_id="actor-corrupt", timeout_s=30)
        backend = ScriptedBackend(tokenizer, lambda text, turn: "```python\nprint(input())\n```")
        sync = WeightSync(backend, receiver, max_policy_lag=8, poll_timeout_s=0.05)
        sink = ListSink()
        runner = EpisodeRunner(config, backend=backend, executor=client, tokenizer=tokenizer,
                               problems=problem_stream(problems, 0, 1, seed=0), sink=sink, actor_id="actor-0",
                               instance="cw", gate=sync)
        stop = asyncio.Event()
        task = asyncio.create_task(sync.run(stop))
        try:
            await runner.run(episodes=4)
            while receiver.checksum_failures < 1:
                await asyncio.sleep(0.05)
            await runner.run(episodes=8)  # still going after the failure
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            client.close()
            receiver.close()
            hub.close()
            transport.close()
            sync_transport.close()
        return sink.records, runner, sync, receiver, hub

    records, runner, sync, receiver, hub = asyncio.run(asyncio.wait_for(go(), 180))
    assert hub.fetches >= 1 and receiver.checksum_failures >= 1
    assert sync.applied == [] and runner.backend.version == 0 and runner.errors == []
    assert len(records) == 8 and all(t.policy_version == 0 for r in records for t in r.rollout.turns)
