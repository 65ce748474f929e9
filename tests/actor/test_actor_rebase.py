"""An actor re-bases onto a restarted hub's weights even when its own version number is higher (issue 11
item 5): real control server and client, real ZeroMQ weight publisher and receivers, the actor's WeightSync.

The scenario of the issue: the actor holds version 3 of hub A; hub A dies; hub B (a learner resumed from a
checkpoint older than the actor's weights) comes back on the same ports at version 0 with other weights.
Before the fix the actor kept version 3 forever (versions only increased on its receiver) and the hub
rejected its rollouts as future_version."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import torch
from helpers.actor_support import ScriptedBackend
from helpers.executor_service import free_port

from rlef.actor.weights_sync import LineageSink, WeightSync
from rlef.common.config import load_config
from rlef.common.protocol.control_client import make_control_client
from rlef.common.protocol.control_hub import make_control_server
from rlef.common.protocol.transport import Transport
from rlef.common.weights import make_publisher, make_receiver
from rlef.monitoring import metrics_actor as M

pytestmark = pytest.mark.slow


class _Backend(ScriptedBackend):
    def __init__(self):
        super().__init__(tokenizer=None, script=lambda _t, _n: "")
        self.weights: torch.Tensor | None = None

    async def load_weights(self, received) -> None:
        self.weights = received.tensors["w"].clone()
        self.version = received.version


class _Hub:
    def __init__(self, config, fill: float, versions: range):
        self.transport = Transport(config.transport)
        self.control = make_control_server(config, self.transport, version=versions[-1])
        self.publisher = make_publisher(config, self.transport)
        for v in versions:
            self.publisher.publish(v, {"w": torch.full((64,), fill + v)})
        self.control.set_version(versions[-1])

    def close(self) -> None:
        self.control.close()
        self.publisher.close()
        self.transport.close()


class _Sink:
    def __init__(self):
        self.sent = []

    async def send(self, record) -> None:
        self.sent.append(record)

    def close(self) -> None:
        pass


def _record(began: float):
    return SimpleNamespace(rollout=SimpleNamespace(rollout_id=f"r-{began}", timings={"finished_unix": began + 1.0, "total_s": 1.0}))


async def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_actor_rebases_onto_a_restarted_hub_with_a_lower_version(tmp_path):
    config = load_config(None, [f"endpoints.control_port={free_port()}", f"endpoints.weights_port={free_port()}",
                                f"run.output_dir={tmp_path}", "weights.type=zmq", "weights.poll_interval_s=0.1"])
    rebased0 = M.WEIGHTS_REBASES._value.get()

    async def scenario() -> None:
        transport = Transport(config.transport)
        hub = _Hub(config, 100.0, range(0, 4))
        control = make_control_client(config, transport, "actor-0", heartbeat_interval_s=0.2)
        backend = _Backend()
        gate = WeightSync(backend, make_receiver(config, transport, "actor-0"), max_policy_lag=1,
                          hub_version=lambda: control.hub_version, hub_known=lambda: control.registered,
                          on_applied=control.heartbeat, receiver_factory=lambda: make_receiver(config, transport, "actor-0"))
        control.add_version_listener(gate.notify)
        control.add_restart_listener(gate.hub_restarted)
        stop = asyncio.Event()
        task = asyncio.create_task(gate.run(stop))
        sink = LineageSink(_Sink(), gate)
        try:
            await asyncio.to_thread(control.register, ["rollouts"], timeout_s=30)
            await _until(lambda: backend.version == 3, 60, "version 3 of hub A")
            assert gate.fresh() and float(backend.weights[0]) == 103.0
            in_flight = time.time()  # an episode that began with hub A's weights
            hub.close()
            hub = _Hub(config, 500.0, range(0, 1))  # resumed "from an older checkpoint": version 0, other weights
            await _until(lambda: gate.rebases == 1 and not gate.rebasing, 60, "the re-base onto hub B")
            assert backend.version == 0 and float(backend.weights[0]) == 500.0
            assert gate.applied[-1] == 0 and control.hub_restarts == 1
            await _until(gate.fresh, 10, "new episodes to be allowed again")
            # Hub B goes on: the actor follows it as usual.
            hub.publisher.publish(1, {"w": torch.full((64,), 501.0)})
            hub.control.set_version(1)
            await _until(lambda: backend.version == 1, 60, "version 1 of hub B")
            assert float(backend.weights[0]) == 501.0
            # Episodes that began before the re-base carry hub A's lineage: dropped; later ones are sent.
            await sink.send(_record(in_flight))
            await sink.send(_record(time.time()))
            assert sink.dropped == 1 and len(sink.inner.sent) == 1
        finally:
            stop.set()
            await task
            gate.receiver.close()
            control.close()
            hub.close()
            transport.close()

    asyncio.run(scenario())
    assert M.WEIGHTS_REBASES._value.get() - rebased0 == 1
