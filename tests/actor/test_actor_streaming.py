"""Rollouts leave the actor as msgpack messages on a PUSH socket with backpressure, and `rlef actor --dry-run`
writes readable JSONL, both against the real executor service."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import zmq
from helpers.actor_support import ScriptedBackend, actor_config
from prometheus_client import REGISTRY

from rlef.actor.episodes import EpisodeRunner
from rlef.actor.problem_stream import problem_stream, shard
from rlef.actor.sinks import PushSink
from rlef.common.config import TransportConfig
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Rollout, TurnStatus
from rlef.common.protocol.transport import Transport

pytestmark = pytest.mark.slow
PROBLEMS = load_problems("sample", split="train")
RIGHT = "```python\nprint(input())\n```"


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class _EnteringPushSink(PushSink):
    """The real PushSink, also counting rollouts handed to ``send`` (``sent`` counts those that left).

    pyzmq's asyncio ``send`` completes without yielding when the socket takes the message, so another task
    sees ``entered > sent`` only while sends are suspended on a full socket."""

    def __init__(self, transport: Transport, endpoint: str):
        super().__init__(transport, endpoint)
        self.entered = 0

    async def send(self, record) -> None:
        self.entered += 1
        await super().send(record)


async def _until(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def test_slow_learner_blocks_new_episodes_then_everything_arrives(tiny_model_dir, tokenizer, executor_service):
    slots, hwm, episodes = 2, 2, 10
    config = actor_config(tiny_model_dir, f"actor.episodes_in_flight={slots}", "actor.max_turns=1")
    port = __import__("helpers.executor_service", fromlist=["free_port"]).free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    names = ["rlef_actor_episodes_total", "rlef_actor_turns_per_episode_count", "rlef_actor_episode_reward_count"]
    statuses = typing.get_args(TurnStatus)
    before = {n: _metric(n) for n in names} | {s: _metric("rlef_actor_turn_outcomes_total", {"turn": "1", "status": s}) for s in statuses}

    async def go():
        transport = Transport(TransportConfig(sndhwm=hwm, rcvhwm=hwm), asyncio=True)
        client = ExecutionClient(transport, executor_service.frontend, client_id="actor-push", timeout_s=30)
        sink = _EnteringPushSink(transport, endpoint)  # nobody bound yet: the learner is "slow"
        runner = EpisodeRunner(config, backend=ScriptedBackend(tokenizer, lambda t, n: RIGHT), executor=client,
                               tokenizer=tokenizer, problems=problem_stream(PROBLEMS, 0, 1, seed=0), sink=sink,
                               actor_id="actor-0", instance="bp")
        task = asyncio.create_task(runner.run(episodes=episodes))
        # Each slot gets one rollout onto the socket, then its next one blocks once the socket holds hwm.
        await _until(lambda: sink.entered == slots + hwm or task.done(), f"{slots + hwm} rollouts handed to the sink")
        stalled = (runner.started, runner.finished, sink.entered, sink.sent, task.done(),
                   bool(sink._sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT))
        pull = transport.server(zmq.PULL, endpoint)
        got = []
        while len(got) < episodes:
            got.append(decode(await asyncio.wait_for(pull.recv(), 60), Rollout))
        await asyncio.wait_for(task, 60)
        # Nothing beyond the ten: no rollout was sent twice.
        extra = await pull.poll(500)
        pull.close(0)
        sink.close()
        client.close()
        transport.close()
        return stalled, got, runner, extra

    (started, finished, entered, sent, done, writable), got, runner, extra = asyncio.run(go())
    # Backpressure happened: the socket held exactly hwm rollouts and refused more, both slots were suspended
    # in send with their second rollout, and neither started a third episode meanwhile.
    assert (done, writable) == (False, False)
    assert (sent, entered, finished, started) == (hwm, slots + hwm, hwm, slots + hwm)
    # Then every rollout arrived exactly once.
    assert sorted(r.rollout_id for r in got) == sorted(f"actor-0-bp-{k}" for k in range(1, episodes + 1))
    assert all(r.actor_id == "actor-0" for r in got) and extra == 0
    assert runner.errors == [] and runner.dropped == [] and runner.finished == episodes and runner.started == episodes
    for n in names:
        assert _metric(n) - before[n] == episodes, n
    outcomes = {s: _metric("rlef_actor_turn_outcomes_total", {"turn": "1", "status": s}) - before[s] for s in statuses}
    assert outcomes == {**dict.fromkeys(statuses, 0.0), "wrong_answer": float(episodes)}


def test_shards_are_disjoint_and_streams_are_seeded():
    shards = [shard(PROBLEMS, i, 3) for i in range(3)]
    ids = [p.problem_id for s in shards for p in s]
    assert sorted(ids) == sorted(p.problem_id for p in PROBLEMS) and len(set(ids)) == len(ids)
    take = lambda seed: [next(s).problem_id for s in [problem_stream(PROBLEMS, 1, 3, seed)] for _ in range(20)]
    assert take(5) == take(5) and take(5) != take(6)
    assert set(take(5)) == {p.problem_id for p in shards[1]}
    with pytest.raises(ValueError):
        shard(PROBLEMS, 3, 3)


def test_cli_dry_run_writes_readable_jsonl(tiny_model_dir, executor_service, tmp_path):
    out = tmp_path / "rollouts.jsonl"
    rlef = str(Path(sys.executable).with_name("rlef"))
    overrides = [o for o in executor_service.overrides if o.startswith("endpoints.")]
    proc = subprocess.run(
        [rlef, "actor", "--dry-run", "--output", str(out), "--episodes", "3", "--actor-index", "1",
         f"model.path={tiny_model_dir}", "actor.metrics_port=0", "actor.sampling.max_new_tokens=16",
         "actor.episodes_in_flight=3", "deploy.actors=2", "data.dataset=sample", "data.path=null", *overrides],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 episodes" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    mine = {p.problem_id for p in shard(PROBLEMS, 1, 2)}
    for line in lines:
        assert line["actor_id"] == "actor-1" and line["problem_id"] in mine
        assert 1 <= len(line["turns"]) <= 3 and len(line["rewards"]) == len(line["turns"])
        first = line["turns"][0]
        assert first["prompt_text"].startswith("Provide a Python solution for the following competitive programming question:")
        assert len(first["response_ids"]) == len(first["logprobs"]) and isinstance(first["response_text"], str)
    assert len({line["rollout_id"] for line in lines}) == 3
