"""`rlef evaluate`: the aggregation against hand-computed counts and estimates, and (slow) the command as a
real process with the tiny model against a real broker + executor."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest

from rlef.actor.evaluate import default_rollouts, repeated
from rlef.actor.evaluation_scores import (
    EpisodeSummary,
    aggregate,
    count_problems,
    estimate,
    turn_errors,
)
from rlef.common.evaluation import bootstrap_ci

ROOT = Path(__file__).resolve().parents[2]

# Problem A: 4 episodes, B: 1 episode, C: skipped by the runner (prompt too long).
EPISODES = [
    EpisodeSummary("A", ("wrong_answer", "pass"), True),
    EpisodeSummary("A", ("pass",), True),
    EpisodeSummary("A", ("pass",), False),  # passes public, fails private
    EpisodeSummary("A", ("no_code", "runtime_error", "timeout"), False),
    EpisodeSummary("B", ("syntax_error", "wrong_answer", "pass"), False),
]
SKIPPED = [("C", "prompt_too_long")]
SETTINGS = {"model": "m", "dataset": "sample", "split": "valid", "rollouts_per_problem": 4, "max_turns": 3,
            "temperature": 0.2, "top_p": 0.95, "test_set": "all"}


def _counts():
    return {c.problem_id: c for c in count_problems(["A", "B", "C"], EPISODES, SKIPPED)}


def test_counts_per_problem():
    c = _counts()
    a, b, skipped = c["A"], c["B"], c["C"]
    assert (a.rollouts, a.public_pass, a.correct, a.first_turn_public_pass, a.first_turn_correct) == (4, 3, 2, 2, 1)
    assert (b.rollouts, b.public_pass, b.correct, b.first_turn_public_pass, b.first_turn_correct) == (1, 1, 0, 0, 0)
    assert (skipped.rollouts, skipped.skipped) == (0, "prompt_too_long")


def test_unknown_problem_is_an_error():
    with pytest.raises(ValueError, match="not in the evaluated set"):
        count_problems(["A"], [EpisodeSummary("Z", ("pass",), True)])


def test_multi_turn_one_at_three():
    # max_turns 3: 1@3 draws one rollout, so it is correct/rollouts: A 2/4, B 0/1, C (skipped) 0.
    e = estimate(list(_counts().values()), 1, 3, 3)
    assert e["problems"] == 3
    assert e["mean"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert (e["mean"], e["ci_low"], e["ci_high"]) == pytest.approx(bootstrap_ci([0.5, 0.0, 0.0], resamples=200))
    assert e["ci_low"] <= e["mean"] <= e["ci_high"]


def test_single_turn_one_at_three():
    # Three first turns of A drawn from {correct, public-but-wrong, rest, rest}: the 4 triples solve with
    # probability 0 (no correct), 1 (correct alone passes public), 1/2, 1/2 -> 0.5. B has too few rollouts
    # (1 < 3) and is left out; C counts 0.
    e = estimate(list(_counts().values()), 1, 3, 3, single=True)
    assert e["problems"] == 2
    assert e["mean"] == pytest.approx(0.25)


def test_ten_at_hundred_needs_33_rollouts():
    counts = list(_counts().values())
    assert estimate(counts, 10, 100, 3) is None  # only the skipped problem would be left
    many = [EpisodeSummary("A", ("pass",), i < 5) for i in range(33)]
    e = estimate(count_problems(["A"], many), 10, 100, 3)
    # All 33 rollouts are drawn and all pass the public tests: 10 of them are submitted uniformly, 5 of the 33
    # are correct, so the problem is solved unless all 10 come from the 28 wrong ones.
    assert e["mean"] == pytest.approx(1 - comb(28, 10) / comb(33, 10))
    assert e["problems"] == 1 and e["ci_low"] == e["ci_high"] == e["mean"]


def test_turn_errors_and_fixes():
    turns = turn_errors(EPISODES)
    assert [t["episodes"] for t in turns] == [5, 3, 2]
    assert turns[0]["status"] == {"no_code": 1, "pass": 2, "syntax_error": 1, "wrong_answer": 1}
    assert turns[0]["fixed_later"] == {"no_code": 0, "syntax_error": 1, "wrong_answer": 1}
    assert turns[0]["fixed_later_correct"] == {"no_code": 0, "syntax_error": 0, "wrong_answer": 1}
    assert turns[1]["status"] == {"pass": 1, "runtime_error": 1, "wrong_answer": 1}
    assert turns[1]["fixed_later"] == {"runtime_error": 0, "wrong_answer": 1}
    assert turns[2]["status"] == {"pass": 1, "timeout": 1}
    assert turns[2]["fixed_later"] == {"timeout": 0}  # the last turn has no later turn


def test_report_json_and_markdown():
    report = aggregate(SETTINGS, ["A", "B", "C"], EPISODES, SKIPPED, ["A: boom"])
    data = json.loads(json.dumps(report.to_json()))
    assert data["estimates"]["pass@1 (final program)"]["mean"] == pytest.approx(0.5 / 3)
    assert data["estimates"]["1@3"]["mean"] == pytest.approx(0.5 / 3)
    assert data["estimates"]["1@3 single-turn"]["mean"] == pytest.approx(0.25)
    assert data["estimates"]["10@100"] is None and data["estimates"]["10@100 single-turn"] is None
    assert [p["problem_id"] for p in data["problems"]] == ["A", "B", "C"]
    md = report.markdown()
    assert "| 1@3 | 0.1667 |" in md and "10@100 | n/a" in md and "C (skipped: prompt_too_long)" in md
    assert "1 episodes failed" in md


def test_errored_problems_are_reported_apart_from_unsolved():
    """Issue 11 item 4: episodes dropped for infrastructure failures are not scored. D's only episodes errored:
    it is errored, not unsolved, and left out of every estimate; A's one errored episode leaves its 4 scored."""
    errored = [("D", "sandbox_error"), ("D", "refused"), ("A", "sandbox_error")]
    report = aggregate(SETTINGS, ["A", "B", "C", "D"], EPISODES, SKIPPED, errored=errored)
    counts = {p.problem_id: p for p in report.problems}
    assert (counts["D"].rollouts, counts["D"].correct, counts["D"].errored) == (0, 0, 2)
    assert (counts["A"].rollouts, counts["A"].errored) == (4, 1)
    # The same estimates as without D (it would pull every mean down if it were counted as unsolved).
    assert report.estimates["pass@1 (final program)"]["mean"] == pytest.approx(0.5 / 3)
    assert report.estimates["pass@1 (final program)"]["problems"] == 3
    assert report.estimates["1@3"]["mean"] == pytest.approx(0.5 / 3) and report.estimates["1@3"]["problems"] == 3
    assert json.loads(json.dumps(report.to_json()))["problems"][3]["errored"] == 2
    md = report.markdown()
    assert "errored (infrastructure, not scored): 3 episodes of 2 problems: A 1, D 2" in md
    assert "left out of every estimate (no scored rollout): D" in md
    with pytest.raises(ValueError, match="'E'"):
        count_problems(["A"], [], errored=[("E", "refused")])


@pytest.mark.slow
def test_evaluation_against_an_executor_that_never_answers_reports_errored(tiny_model_dir, tokenizer, tmp_path):
    """Every execution times out: every problem is errored with all its episodes, none is scored unsolved."""
    import asyncio

    import zmq
    from helpers.actor_support import ScriptedBackend, actor_config

    from rlef.actor.evaluate import run_evaluation

    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    config = actor_config(tiny_model_dir, f"endpoints.broker_frontend_port={port}",
                          "actor.execution_timeout_s=0.3", "actor.sandbox_retries=1", "actor.sandbox_retry_backoff_s=0")
    try:
        report = asyncio.run(run_evaluation(config, rollouts=2, protocol="1@3", output=tmp_path, split="valid", limit=2,
                                            backend=ScriptedBackend(tokenizer, lambda _t, _n: _fenced("print(1)\n"))))
    finally:
        silent.close(0)
        ctx.term()
    assert [(p.rollouts, p.correct, p.errored) for p in report.problems] == [(0, 0, 2), (0, 0, 2)]
    assert report.estimates["pass@1 (final program)"] is None and report.estimates["1@3"] is None
    assert "errored (infrastructure, not scored): 4 episodes of 2 problems" in (tmp_path / "evaluation.md").read_text()


def test_defaults_and_repetition():
    assert default_rollouts("1@3", 3) == 3
    assert default_rollouts("10@100", 3) == 33
    assert list(repeated(["x", "y"], 2)) == ["x", "x", "y", "y"]


@pytest.mark.slow
def test_rlef_evaluate_process(tiny_model_dir, executor_service, tmp_path):
    rlef = str(Path(sys.executable).with_name("rlef"))
    overrides = [o for o in executor_service.overrides if o.startswith("endpoints.")] + [
        "actor.sampling.max_new_tokens=16", "actor.episodes_in_flight=4", "actor.execution_timeout_s=30",
    ]
    out = tmp_path / "eval"
    proc = subprocess.run(
        [rlef, "evaluate", "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--model", str(tiny_model_dir),
         "--split", "valid", "--limit", "2", "-R", "2", "--output", str(out), *overrides],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").read_text().startswith("# Evaluation")
    assert data["settings"]["temperature"] == 0.2 and data["settings"]["top_p"] == 0.95
    assert data["settings"]["test_set"] == "all" and data["errors"] == []
    problems = data["problems"]
    assert len(problems) == 2 and all(p["rollouts"] == 2 for p in problems)
    for p in problems:
        assert 0 <= p["correct"] <= p["public_pass"] <= p["rollouts"]
        assert 0 <= p["first_turn_correct"] <= p["first_turn_public_pass"] <= p["rollouts"]
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4
    # Final programs were scored on public + private + generated tests (the sample valid split has all three).
    assert all(e["final"]["tests_total"] > 0 for e in episodes)
    assert data["turns"][0]["episodes"] == 4
    assert sum(t["episodes"] for t in data["turns"]) == sum(len(e["turns"]) for e in episodes)
    assert sum(data["turns"][0]["status"].values()) == 4
    one = data["estimates"]["1@3"]
    assert one["problems"] == 2 and one["ci_low"] <= one["mean"] <= one["ci_high"]
    assert data["estimates"]["10@100"] is None
    assert "1@3" in proc.stdout


@pytest.mark.slow
def test_local_sandboxes_do_not_need_the_configs_ports(tiny_model_dir, tmp_path):
    """`rlef evaluate --executors 1` with every port of the config taken (as in the final evaluation of
    `rlef launch`, whose run broker may still be closing): its own broker and executor use other ports."""
    import socket

    import yaml

    held = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        held.append(s)
    front, back, metrics = (s.getsockname()[1] for s in held)
    config = yaml.safe_load((ROOT / "configs/tiny-cpu.yaml").read_text())
    config.setdefault("endpoints", {}).update(broker_frontend_port=front, broker_backend_port=back)
    config["executor"]["metrics_port"] = metrics + 1  # the broker serves metrics on metrics_port - 1
    path = tmp_path / "run-config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "eval"
    rlef = str(Path(sys.executable).with_name("rlef"))
    try:
        proc = subprocess.run(
            [rlef, "evaluate", "--config", str(path), "--model", str(tiny_model_dir), "--split", "valid", "--limit", "1",
             "-R", "1", "--executors", "1", "--output", str(out), "actor.sampling.max_new_tokens=16"],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
    finally:
        for s in held:
            s.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "evaluation.json").read_text())["errors"] == []
    broker_log = (out / "logs" / "executor-broker.log").read_text()
    assert "Address already in use" not in broker_log and f":{front}" not in broker_log


def _fenced(code: str) -> str:
    return f"```python\n{code}```"


@pytest.mark.slow
def test_evaluation_of_a_policy_that_repairs_on_turn_two(tiny_model_dir, tokenizer, executor_service, tmp_path):
    """A scripted policy: a wrong program first, the problem's reference solution after the feedback. Every
    episode is then a repair: public pass and correct on turn 2, wrong_answer on turn 1 fixed later."""
    import asyncio

    from helpers.actor_support import ScriptedBackend, actor_config

    from rlef.actor.evaluate import run_evaluation
    from rlef.common.data.loaders import load_problems

    problems = load_problems("sample", split="valid", limit=2)
    solutions = {p.description: p.solutions[0] for p in problems}

    def script(text: str, turn: int) -> str:
        if turn == 1:
            return _fenced("print('nope')\n")
        return _fenced(next(code for desc, code in solutions.items() if desc in text))

    config = actor_config(tiny_model_dir, *[o for o in executor_service.overrides if o.startswith("endpoints.")],
                          "data.dataset=sample", "data.path=null")
    report = asyncio.run(run_evaluation(config, rollouts=3, protocol="1@3", output=tmp_path, split="valid", limit=2,
                                        backend=ScriptedBackend(tokenizer, script)))
    counts = [(p.problem_id, p.rollouts, p.public_pass, p.correct, p.first_turn_public_pass) for p in report.problems]
    assert counts == [(p.problem_id, 3, 3, 3, 0) for p in problems]
    assert report.estimates["1@3"]["mean"] == 1.0 and report.estimates["1@3 single-turn"]["mean"] == 0.0
    assert report.turns[0] == {"turn": 1, "episodes": 6, "status": {"wrong_answer": 6},
                               "fixed_later": {"wrong_answer": 6}, "fixed_later_correct": {"wrong_answer": 6}}
    assert report.turns[1]["status"] == {"pass": 6} and len(report.turns) == 2
    lines = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    totals = {p.problem_id: len(p.tests("all")) for p in problems}
    assert all(x["final"]["tests_total"] == totals[x["problem_id"]] and x["final"]["passed"] for x in lines)


@pytest.mark.slow
def test_runner_scores_final_programs_on_generated_tests_when_asked(tiny_model_dir, tokenizer, executor_service):
    """final_test_set="all" brings in generated tests: a generated test the reference solution fails makes the
    episode unsolved, while the default (public + private) scores it solved."""
    import asyncio
    import dataclasses

    from helpers.actor_support import ScriptedBackend, actor_config

    from rlef.actor.episodes import EpisodeRunner
    from rlef.actor.sinks import ListSink
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.messages import TestCase
    from rlef.common.protocol.transport import Transport
    from rlef.common.data.loaders import load_problems

    base = load_problems("sample", split="valid", limit=1)[0]
    problem = dataclasses.replace(base, generated_tests=[TestCase(input="2\n1 1\n", output="7\n")])
    config = actor_config(tiny_model_dir)

    async def final(test_set: str):
        transport = Transport(config.transport, asyncio=True)
        client = ExecutionClient(transport, executor_service.frontend, client_id=f"eval-{test_set}", timeout_s=30)
        try:
            sink = ListSink()
            runner = EpisodeRunner(config, backend=ScriptedBackend(tokenizer, lambda _t, _n: _fenced(base.solutions[0])),
                                   executor=client, tokenizer=tokenizer, problems=iter([problem]), sink=sink,
                                   actor_id="t", instance="n0", final_test_set=test_set)
            await runner.run(1)
            return sink.records[0].rollout.final
        finally:
            client.close()
            transport.close()

    default, everything = asyncio.run(final("public+private")), asyncio.run(final("all"))
    assert default.passed and default.tests_total == len(base.tests("public+private"))
    assert not everything.passed and everything.tests_total == default.tests_total + 1
    assert everything.tests_passed == default.tests_total


@pytest.mark.slow
def test_restart_runs_only_the_missing_episodes(tiny_model_dir, tokenizer, executor_service, tmp_path):
    """An evaluation of 2 rollouts per problem, then the same one with 3: the second runs one episode per
    problem (the scripted backend counts its first-turn calls) and aggregates all three."""
    import asyncio

    from helpers.actor_support import ScriptedBackend, actor_config

    from rlef.actor.evaluate import run_evaluation
    from rlef.common.data.loaders import load_problems

    problems = load_problems("sample", split="valid", limit=2)
    config = actor_config(tiny_model_dir, *[o for o in executor_service.overrides if o.startswith("endpoints.")],
                          "data.dataset=sample", "data.path=null")
    solution = {p.description: p.solutions[0] for p in problems}

    def run(rollouts: int) -> tuple[object, ScriptedBackend]:
        backend = ScriptedBackend(tokenizer, lambda text, _turn: _fenced(next(c for d, c in solution.items() if d in text)))
        report = asyncio.run(run_evaluation(config, rollouts=rollouts, protocol="1@3", output=tmp_path, split="valid",
                                            limit=2, backend=backend))
        return report, backend

    first, backend = run(2)
    assert len(backend.calls) == 4 and all(p.rollouts == 2 for p in first.problems)
    second, backend = run(3)
    assert len(backend.calls) == 2  # one missing episode per problem
    assert [(p.rollouts, p.correct) for p in second.problems] == [(3, 3), (3, 3)]
    assert second.settings["resumed_episodes"] == 4
    lines = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(x["codes"] == [x["final_code"]] for x in lines)
    third, backend = run(3)
    assert backend.calls == [] and third.settings["resumed_episodes"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("dataset,template,file", [("humanevalplus", "humaneval", "HumanEvalPlus-mini.jsonl"),
                                                    ("mbppplus", "mbpp", "MbppPlus-mini.jsonl")])
def test_evalplus_evaluation_of_the_canonical_solutions(dataset, template, file, tiny_model_dir, tokenizer, executor_service, tmp_path):
    """HumanEval+ / MBPP+ through the runner with the paper's templates: a policy answering with the canonical
    solution (HumanEval+: the body after the pre-filled prompt) solves every task on public + private tests."""
    import asyncio

    from helpers.actor_support import ScriptedBackend, actor_config

    from rlef.actor.evaluate import run_evaluation
    from rlef.common.data.loaders import load_problems

    path = ROOT / "tests" / "fixtures" / "evalplus" / file
    problems = load_problems(dataset, str(path), "test")
    config = actor_config(tiny_model_dir, *[o for o in executor_service.overrides if o.startswith("endpoints.")],
                          f"data.dataset={dataset}", f"data.path={path}", f"prompt.template={template}",
                          "actor.sampling.max_new_tokens=1024", "model.max_seq_len=4096")
    rows = [json.loads(line) for line in path.read_text().splitlines()]

    def script(text: str, _turn: int) -> str:
        row = next(r for r in rows if f"{r['entry_point']}(" in text)
        if dataset == "humanevalplus":  # the response continues the pre-filled prompt and closes the fence
            return row["canonical_solution"] + "```"
        return _fenced(row["canonical_solution"].strip("\n") + "\n")

    report = asyncio.run(run_evaluation(config, rollouts=1, protocol="1@3", output=tmp_path, split="test",
                                        backend=ScriptedBackend(tokenizer, script)))
    assert [(p.problem_id, p.rollouts, p.correct) for p in report.problems] == [(p.problem_id, 1, 1) for p in problems]
    assert report.turns[0]["status"] == {"pass": len(problems)}
