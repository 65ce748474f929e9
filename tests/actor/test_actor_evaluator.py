"""The in-training evaluator: its schedule and selection (pure), the loop with real weights over ZeroMQ, a
real executor and a scripted policy whose quality depends on the weights version, and `rlef evaluator` as a
real process against a hub made of the real common/ pieces (registers, evaluates, writes its metrics log,
stops when the hub says so)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlef.actor.evaluator import Selection, checkpoint_of_version, is_due


def test_schedule():
    assert is_due(0, None, 5, True) and not is_due(0, None, 5, False) and is_due(5, None, 5, False)
    assert not is_due(4, 0, 5, True) and is_due(5, 0, 5, True) and is_due(9, 3, 5, True)


def _point(version: int, mean: float | None) -> dict:
    return {"version": version, "estimates": {} if mean is None else {"1@3": {"mean": mean, "ci_low": 0, "ci_high": 1}}}


def test_selection_keeps_the_earlier_of_ties():
    s = Selection("1@3")
    assert s.offer(_point(0, 0.2)) and not s.offer(_point(5, 0.2)) and s.offer(_point(10, 0.5))
    assert not s.offer(_point(15, None)) and not s.offer(_point(20, 0.4))
    assert s.best["version"] == 10 and [p["version"] for p in s.history] == [0, 5, 10, 15, 20]


def test_checkpoint_of_version(tmp_path):
    for step, version, complete in ((8, 2, True), (16, 4, True), (24, 6, False)):
        d = tmp_path / f"step-{step:08d}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "version": version}))
        if complete:
            (d / "COMPLETE").write_text("")
    assert checkpoint_of_version(tmp_path, 4) == tmp_path / "step-00000016"
    assert checkpoint_of_version(tmp_path, 6) is None  # torn checkpoint
    assert checkpoint_of_version(tmp_path / "none", 2) is None


def _fenced(code: str) -> str:
    return f"```python\n{code}```"


@contextlib.asynccontextmanager
async def running_evaluator(config, *, port: int, frontend: str, client_id: str, backend, tokenizer, problems,
                            out_dir: Path):
    """An Evaluator on ``backend``, its receiver fed by a real ZmqPublisher on ``port`` and its episodes run by
    the real executor at ``frontend``, running (``run(stop, poll_s=0.1)``) as a task. Yields the evaluator, its
    task, the publisher and the stop event; afterwards stops it, awaits the task and closes everything."""
    from rlef.actor.evaluator import Evaluator
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.transport import Transport
    from rlef.common.weights import make_receiver
    from rlef.common.weights.zmq.hub import ZmqPublisher

    atransport, transport = Transport(config.transport, asyncio=True), Transport(config.transport)
    publisher = ZmqPublisher(transport, f"tcp://127.0.0.1:{port}", chunk_bytes=1 << 18)
    receiver = make_receiver(config, transport, "evaluator-0")
    executor = ExecutionClient(atransport, frontend, client_id=client_id, timeout_s=30)
    ev = Evaluator(config, backend=backend, executor=executor, tokenizer=tokenizer, problems=problems,
                   receiver=receiver, out_dir=out_dir)
    stop = asyncio.Event()
    task = asyncio.create_task(ev.run(stop, poll_s=0.1))
    try:
        yield ev, task, publisher, stop
    finally:
        stop.set()
        if not task.cancelled():  # a test's own wait_for that timed out cancelled it: its error stands
            await task
        executor.close()
        receiver.close()
        publisher.close()
        atransport.close()
        transport.close()


@pytest.mark.slow
def test_evaluator_loop_selects_the_version_that_solves(tiny_model_dir, tokenizer, executor_service, tmp_path):
    """Versions 0..3 published over real ZeroMQ; every 2 versions: 0 and 2 are evaluated, 1 is replaced.
    The scripted policy solves only with version 2 loaded, so version 2 is selected and exported."""
    import torch
    from helpers.actor_support import ScriptedBackend, actor_config
    from helpers.executor_service import free_port
    from transformers import AutoModelForCausalLM

    from rlef.actor.evaluator import Evaluator
    from rlef.common.data.loaders import load_problems

    port = free_port()
    config = actor_config(tiny_model_dir, *[o for o in executor_service.overrides if o.startswith("endpoints.")],
                          "data.dataset=sample", "data.path=null", f"endpoints.weights_port={port}",
                          "weights.poll_interval_s=0.1", "evaluator.every_versions=2", "evaluator.rollouts_per_problem=2",
                          "evaluator.limit=2", "evaluator.nice=0", f"run.output_dir={tmp_path}", "run.name=run")
    problems = load_problems("sample", split="valid", limit=2, generated=True)
    solutions = {p.description: p.solutions[0] for p in problems}
    state = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    backend = None

    def script(text: str, _turn: int) -> str:
        if backend.version != 2:
            return _fenced("print('nope')\n")
        return _fenced(next(code for desc, code in solutions.items() if desc in text))

    backend = ScriptedBackend(tokenizer, script)
    backend.version = -1

    out = tmp_path / "run" / "eval"
    out.mkdir(parents=True)

    async def main() -> Evaluator:
        async with running_evaluator(config, port=port, frontend=executor_service.frontend, client_id="evaluator-test",
                                     backend=backend, tokenizer=tokenizer, problems=problems, out_dir=out) as running:
            ev, task, publisher, _stop = running
            for version in range(4):
                publisher.publish(version, {k: v + 0.001 * version for k, v in state.items()})
                target = {0: [0], 1: [0], 2: [0, 2], 3: [0, 2]}[version]
                deadline = time.monotonic() + 120
                while [p["version"] for p in ev.selection.history] != target and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    assert not task.done(), task.exception()
                await asyncio.sleep(0.5)  # lets a wrongly due version start
        return ev

    ev = asyncio.run(main())
    assert [p["version"] for p in ev.selection.history] == [0, 2]
    curve = [json.loads(x) for x in (out / "curve.jsonl").read_text().splitlines()]
    assert [c["version"] for c in curve] == [0, 2]
    assert curve[0]["estimates"]["1@3"]["mean"] == 0.0 and curve[1]["estimates"]["1@3"]["mean"] == 1.0
    best = json.loads((out / "best.json").read_text())
    assert best["best"]["version"] == 2 and best["latest"]["version"] == 2 and best["best"]["checkpoint"] is None
    assert best["select_on"] == "1@3" and best["evaluations"] == 2
    assert (out / "valid" / "v000002" / "evaluation.md").exists()
    # The exported best model is version 2's weights, loadable as a Hugging Face model.
    model = AutoModelForCausalLM.from_pretrained(str(out / "best-model"))
    name, tensor = next(iter(model.state_dict().items()))
    assert torch.allclose(tensor, state[name] + 0.002)
    assert json.loads((out / "best-model" / "rlef_version.json").read_text()) == {"version": 2}


@pytest.mark.slow
def test_evaluator_process_registers_evaluates_and_stops(tiny_model_dir, executor_service, tmp_path):
    from helpers.executor_service import free_port
    from transformers import AutoModelForCausalLM

    from rlef.common.config import TransportConfig
    from rlef.common.protocol.control_hub import ControlServer
    from rlef.common.protocol.transport import Transport
    from rlef.common.weights.zmq.hub import ZmqPublisher
    from rlef.monitoring.metrics_log import read_metrics_log

    ports = {name: free_port() for name in ("weights", "control", "metrics")}
    state = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    with Transport(TransportConfig()) as transport:
        control = ControlServer(transport, f"tcp://127.0.0.1:{ports['control']}", version=0)
        publisher = ZmqPublisher(transport, f"tcp://127.0.0.1:{ports['weights']}", chunk_bytes=1 << 18)
        publisher.publish(0, state)
        overrides = [o for o in executor_service.overrides if o.startswith("endpoints.")] + [
            f"endpoints.weights_port={ports['weights']}", f"endpoints.control_port={ports['control']}",
            f"model.path={tiny_model_dir}", "data.dataset=sample", "data.path=null", "actor.sampling.max_new_tokens=8",
            "weights.poll_interval_s=0.2", f"run.output_dir={tmp_path}", "run.name=run", "evaluator.limit=1",
            "evaluator.rollouts_per_problem=1", "evaluator.every_versions=1", f"evaluator.metrics_port={ports['metrics']}",
            "monitoring.metrics_log_interval_s=60",
        ]
        log = open(tmp_path / "evaluator.log", "w")
        rlef = str(Path(sys.executable).with_name("rlef"))
        proc = subprocess.Popen([rlef, "evaluator", *overrides], stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
        curve = tmp_path / "run" / "eval" / "curve.jsonl"
        try:
            deadline = time.monotonic() + 240
            while not curve.exists() and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "evaluator.log").read_text()[-3000:]
                time.sleep(0.5)
            assert curve.exists(), (tmp_path / "evaluator.log").read_text()[-3000:]
            assert any(p.sender_id == "evaluator-0" for p in control.peers())
            import urllib.request

            text = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).read().decode()
            assert "rlef_evaluator_evaluations_total 1.0" in text and 'rlef_evaluator_solve_rate{estimate="1@3"}' in text
            assert "rlef_actor_episodes_total" not in text  # evaluation episodes never count as training throughput
            control.request_stop()
            assert proc.wait(timeout=120) == 0, (tmp_path / "evaluator.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            publisher.close()
            control.close()
    assert [json.loads(x)["version"] for x in curve.read_text().splitlines()] == [0]
    best = json.loads((tmp_path / "run" / "eval" / "best.json").read_text())
    assert best["best"]["version"] == 0 and (tmp_path / "run" / "eval" / "best-model" / "config.json").exists()
    records = list(read_metrics_log(tmp_path / "run" / "metrics" / "evaluator-0.jsonl"))
    assert records and any(r.values.get("rlef_evaluator_evaluated_version") == 0 for r in records)
    assert records[-1].step == 1


def test_report_section_shows_the_curve_and_the_selection(tmp_path):
    from rlef.monitoring.report_evaluator import evaluator_section

    assert evaluator_section(tmp_path, tmp_path / "report") is None
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    points = [{"version": v, "seconds": 3.0, "episodes": 6, "estimates": {"1@3": {"mean": m, "ci_low": m / 2, "ci_high": m}}}
              for v, m in ((0, 0.25), (10, 0.5), (20, 0.4))]
    (eval_dir / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points) + '{"torn')
    (eval_dir / "best.json").write_text(json.dumps({"select_on": "1@3", "split": "valid", "best": {"version": 10, "checkpoint": None,
                                                    "model_dir": "m"}, "latest": {"version": 20}, "final_checkpoint": "c"}))
    md = evaluator_section(tmp_path, tmp_path / "report")
    assert "| 10 (selected) | 50.0 [25.0, 50.0] |" in md and "| 20 | 40.0" in md and "version 10, checkpoint" in md
    assert (tmp_path / "report" / "eval-curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_stop_abandons_an_evaluation_in_progress(tiny_model_dir, tokenizer, executor_service, tmp_path):
    """A stop while episodes are generating ends the loop without waiting for them; nothing is recorded."""
    from helpers.actor_support import ScriptedBackend, actor_config
    from helpers.executor_service import free_port
    from transformers import AutoModelForCausalLM

    from rlef.actor.evaluator import Evaluator
    from rlef.common.data.loaders import load_problems

    class Stuck(ScriptedBackend):
        """The test's policy: it never finishes a response (an engine busy for far longer than the test)."""

        async def generate(self, prompt_ids, sampling):
            await asyncio.sleep(3600)

    port = free_port()
    config = actor_config(tiny_model_dir, *[o for o in executor_service.overrides if o.startswith("endpoints.")],
                          "data.dataset=sample", "data.path=null", f"endpoints.weights_port={port}",
                          "weights.poll_interval_s=0.1", "evaluator.limit=1", "evaluator.nice=0")
    problems = load_problems("sample", split="valid", limit=1, generated=True)
    state = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    backend = Stuck(tokenizer, lambda _t, _n: "")
    backend.version = -1
    out = tmp_path / "eval"
    out.mkdir()

    async def main() -> Evaluator:
        async with running_evaluator(config, port=port, frontend=executor_service.frontend, client_id="evaluator-stop",
                                     backend=backend, tokenizer=tokenizer, problems=problems, out_dir=out) as running:
            ev, task, publisher, stop = running
            publisher.publish(0, state)
            while not (out / "valid" / "v000000").exists():
                await asyncio.sleep(0.1)
                assert not task.done(), task.exception()
            stop.set()
            await asyncio.wait_for(task, 120)  # a hang guard, not a timing threshold
        return ev

    ev = asyncio.run(main())
    assert ev.selection.history == [] and not (out / "curve.jsonl").exists() and not (out / "candidate-model").exists()
