"""Rollouts leave the actor as msgpack messages on a PUSH socket with backpressure, and `rlef actor --dry-run`
writes readable JSONL, both against the real executor service."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from helpers.actor_support import ScriptedBackend, actor_config
from prometheus_client import REGISTRY

from rlef.actor.episodes import EpisodeRunner
from rlef.actor.problem_stream import problem_stream, shard
from rlef.actor.sinks import PushSink
from rlef.common.config import TransportConfig
from rlef.common.data import load_problems
from rlef.common.execution_client import ExecutionClient
from rlef.common.messages import Rollout, decode
from rlef.common.transport import Transport

pytestmark = pytest.mark.slow
PROBLEMS = load_problems("sample", split="train")
RIGHT = "```python\nprint(input())\n```"


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_slow_learner_blocks_new_episodes_then_everything_arrives(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=2", "actor.max_turns=1")
    port = __import__("helpers.executor_service", fromlist=["free_port"]).free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    episodes_before = _metric("rlef_actor_episodes_total")

    async def go():
        transport = Transport(TransportConfig(sndhwm=2, rcvhwm=2), asyncio=True)
        client = ExecutionClient(transport, executor_service.frontend, client_id="actor-push", timeout_s=30)
        sink = PushSink(transport, endpoint)  # nobody bound yet: the learner is "slow"
        runner = EpisodeRunner(config, backend=ScriptedBackend(tokenizer, lambda t, n: RIGHT), executor=client,
                               tokenizer=tokenizer, problems=problem_stream(PROBLEMS, 0, 1, seed=0), sink=sink,
                               actor_id="actor-0", instance="bp")
        task = asyncio.create_task(runner.run(episodes=10))
        await asyncio.sleep(4)
        stalled = (runner.started, runner.finished, sink.sent)
        assert not task.done()
        pull = transport.server(zmq.PULL, endpoint)
        got = []
        while len(got) < 10:
            got.append(decode(await asyncio.wait_for(pull.recv(), 60), Rollout))
        await asyncio.wait_for(task, 60)
        pull.close(0)
        sink.close()
        client.close()
        transport.close()
        return stalled, got, runner

    (started, finished, sent), got, runner = asyncio.run(go())
    # At most sndhwm rollouts queue on the socket; one more waits in each blocked slot; no slot starts more.
    assert sent <= 2 and finished <= 2 and started <= 2 + 2
    assert len({r.rollout_id for r in got}) == 10 and all(r.actor_id == "actor-0" for r in got)
    assert runner.errors == [] and runner.finished == 10
    assert _metric("rlef_actor_episodes_total") - episodes_before >= 10
    assert _metric("rlef_actor_turn_outcomes_total", {"turn": "1", "status": "wrong_answer"}) > 0
    assert _metric("rlef_actor_turns_per_episode_count") >= 10 and _metric("rlef_actor_episode_reward_count") >= 10


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
