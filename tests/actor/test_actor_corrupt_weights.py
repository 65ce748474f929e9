"""A hub that serves a weights version whose chunks are corrupt: the actor never applies it (the receiver's
checksum refuses it), keeps its version, and keeps producing rollouts with the real executor service."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
import zmq
from helpers.actor_support import ScriptedBackend, actor_config

from rlef.actor.episodes import EpisodeRunner
from rlef.actor.problem_stream import problem_stream
from rlef.actor.sinks import ListSink
from rlef.actor.weights_sync import WeightSync
from rlef.common.config import TransportConfig
from rlef.common.data import load_problems
from rlef.common.execution_client import ExecutionClient
from rlef.common.messages import Control, WeightsRequest, decode, encode
from rlef.common.transport import Transport
from rlef.common.weights.packing import pack
from rlef.common.weights.zmq_transport import ZmqReceiver, encode_chunk

pytestmark = pytest.mark.slow


class CorruptHub:
    """A real ROUTER speaking the zmq weights protocol whose every chunk has one flipped byte."""

    def __init__(self, transport: Transport):
        self.packed = pack(1, {"w": torch.arange(4096, dtype=torch.float32)}, 4096)
        self.sock = transport.server(zmq.ROUTER, "tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.fetches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, frame = self.sock.recv_multipart()
            request = decode(frame, WeightsRequest)
            if request.op == "get":
                reply = encode(self.packed.manifest) if request.version < 1 else encode(
                    Control(op="ack", sender_id="hub", role="learner", version=1))
            else:
                self.fetches += 1
                data = bytes(self.packed.chunk(request.index))
                reply = encode_chunk(request.version, request.index, bytes([data[0] ^ 0xFF]) + data[1:])
            self.sock.send_multipart([identity, reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(0)


def test_corrupt_weights_are_never_applied_and_episodes_go_on(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=2", "actor.max_turns=1")
    problems = load_problems("sample", split="train")

    async def go():
        sync_transport = Transport(TransportConfig())
        hub = CorruptHub(sync_transport)
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
