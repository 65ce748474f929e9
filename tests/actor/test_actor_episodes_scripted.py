"""The episode runner with a scripted policy and the real executor service (broker + nsjail executor
processes): early stop, turn limit, rewards, no-code penalty, feedback per failure class, random feedback,
and bad input (an executor that never answers, a problem without tests)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import zmq
from helpers.actor_support import ScriptedBackend, actor_config

from rlef.actor.episodes import EpisodeRunner
from rlef.actor.sinks import ListSink
from rlef.common.text import chat, prompts
from rlef.common.config import TransportConfig
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import ExecutionJob, Limits, Rollout, encode, unpack_floats, unpack_ids
from rlef.common.protocol.transport import Transport

pytestmark = pytest.mark.slow

PROBLEMS = {p.problem_id: p for p in load_problems("sample", split="train")}
SUM = PROBLEMS["sum_of_two"]
RIGHT = "Here it is:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
NO_CODE = "I do not know."


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


async def _episodes(config, tokenizer, frontend, script, problems, *, feedback_problems=(), timeout_s=30.0, caps=None):
    """Run one episode per problem (K = config's episodes_in_flight) and return records in problem order."""
    transport = Transport(TransportConfig(), asyncio=True)
    client = ExecutionClient(transport, frontend, client_id="actor-test", timeout_s=timeout_s, executor=caps)
    try:
        backend = ScriptedBackend(tokenizer, script)
        sink = ListSink()
        runner = EpisodeRunner(
            config, backend=backend, executor=client, tokenizer=tokenizer, problems=iter(problems), sink=sink,
            actor_id="actor-t", instance="n0", feedback_problems=feedback_problems,
        )
        await runner.run(episodes=len(problems))
        order = {p.problem_id: i for i, p in enumerate(problems)}
        return sorted(sink.records, key=lambda r: order[r.problem.problem_id]), runner
    finally:
        client.close()
        transport.close()


def run(config, tokenizer, service, script, problems, **kw):
    return asyncio.run(_episodes(config, tokenizer, service.frontend, script, problems, **kw))


def by_turn(*texts: str):
    return lambda _text, turn: texts[min(turn, len(texts)) - 1]


def test_early_stop_repair_and_full_length(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=3")
    right_first = dataclasses.replace(SUM, problem_id="right-first")
    repaired = dataclasses.replace(SUM, problem_id="repaired")
    never = dataclasses.replace(SUM, problem_id="never")
    scripts = {"right-first": (RIGHT,), "repaired": (WRONG, RIGHT), "never": (WRONG,)}
    problems = [right_first, repaired, never]
    # The scripted policy recognises the episode by the order of first calls: give each problem its own text.
    problems = [dataclasses.replace(p, description=f"[{p.problem_id}] " + p.description) for p in problems]

    def script(text: str, turn: int) -> str:
        key = text.split("[", 1)[1].split("]", 1)[0]
        seq = scripts[key]
        return seq[min(turn, len(seq)) - 1]

    records, runner = run(config, tokenizer, executor_service, script, problems)
    assert runner.errors == [] and len(records) == 3
    first, fixed, failed = records
    assert [t.outcome.status for t in first.turns] == ["pass"]
    assert first.rollout.rewards == [1.0] and first.rollout.final.passed
    assert first.rollout.final.tests_total == len(SUM.public_tests) + len(SUM.private_tests)
    assert first.rollout.final.tests_passed == first.rollout.final.tests_total
    assert [t.outcome.status for t in fixed.turns] == ["wrong_answer", "pass"]
    assert fixed.rollout.rewards == [0.0, 1.0]
    assert [t.outcome.status for t in failed.turns] == ["wrong_answer"] * 3
    assert failed.rollout.rewards == [0.0, 0.0, -1.0] and not failed.rollout.final.passed
    # The paper's wrong-answer bullet, shown as the next user turn.
    expected = (
        "Your code failed the following tests:\n\n- input `1 2\n` failed:\nExpected output `3\n` but got `-1\n`\n\n"
        + prompts.RETRY
    )
    assert failed.turns[0].feedback == expected and failed.turns[1].feedback == expected
    assert failed.turns[2].feedback is None
    assert len({r.rollout.rollout_id for r in records}) == 3


def test_no_code_penalty(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=2")
    a = dataclasses.replace(SUM, problem_id="late-code", description="[late-code] " + SUM.description)
    b = dataclasses.replace(SUM, problem_id="no-code", description="[no-code] " + SUM.description)

    def script(text: str, turn: int) -> str:
        if "[late-code]" in text:
            return RIGHT if turn == 3 else NO_CODE
        return NO_CODE

    (late, never), _ = run(config, tokenizer, executor_service, script, [a, b])
    assert [t.outcome.status for t in late.turns] == ["no_code", "no_code", "pass"]
    assert late.rollout.rewards == pytest.approx([-0.2, -0.2, 1.0])
    assert late.turns[0].feedback == prompts.render_no_code_feedback()
    assert [t.has_code for t in late.rollout.turns] == [False, False, True]
    assert never.rollout.rewards == pytest.approx([-0.2, -0.2, -1.2])
    assert never.rollout.final.status == "no_code" and never.final_result is None

    config = actor_config(tiny_model_dir, "reward.no_code_penalty_stacks=false")
    (never,), _ = run(config, tokenizer, executor_service, lambda t, n: NO_CODE, [b])
    assert never.rollout.rewards == pytest.approx([-0.2, -0.2, -1.0])


FAILURES = {
    "runtime_error": ("a, b = map(int, input().split())\nraise ValueError('boom ' + str(a))", ["ValueError: boom 1", "Traceback"]),
    "timeout": ("while True:\n    pass", ["- input `1 2\n` failed: Execution took too long."]),
    "oom": ("x = bytearray(8 * 1024 ** 3)\nprint(len(x))", ["- input `1 2\n` failed: Out of memory."]),
    "syntax_error": ("print(1 +", ["Your code could not be compiled:", "SyntaxError"]),
}


def test_feedback_per_failure_class(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.max_turns=2", "actor.episodes_in_flight=4", "executor.default_time_limit_s=1")
    problems = [dataclasses.replace(SUM, problem_id=k, description=f"[{k}] " + SUM.description) for k in FAILURES]

    def script(text: str, turn: int) -> str:
        key = text.split("[", 1)[1].split("]", 1)[0]
        return fenced(FAILURES[key][0]) if turn == 1 else RIGHT

    records, runner = run(config, tokenizer, executor_service, script, problems)
    assert runner.errors == []
    for record in records:
        status = record.problem.problem_id
        first = record.turns[0]
        assert first.outcome.status == status, (status, first.result)
        for needle in FAILURES[status][1]:
            assert needle in first.feedback, (status, first.feedback)
        assert first.feedback.endswith(prompts.RETRY)
        # The feedback is the next prompt segment, token for token.
        assert record.turns[1].prompt_ids == chat.next_prompt_ids(tokenizer, first.feedback)
        assert [t.outcome.status for t in record.turns] == [status, "pass"] and record.rollout.rewards == [0.0, 1.0]


def test_rollout_token_ids_are_the_conversation(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir)
    (record,), _ = run(config, tokenizer, executor_service, by_turn(NO_CODE, WRONG, RIGHT), [SUM])
    rollout = decode(encode(record.rollout), Rollout)
    ids = [int(i) for turn in rollout.turns for seg in (turn.prompt_ids, turn.response_ids) for i in unpack_ids(seg)]
    messages = []
    for turn in record.turns:
        messages.append({"role": "user", "content": turn.prompt_text})
        messages.append({"role": "assistant", "content": turn.response_text})
    assert ids == chat.full_conversation_ids(tokenizer, messages)
    assert all(len(unpack_floats(t.logprobs)) == t.num_response_tokens for t in rollout.turns)
    # What the engine saw on each turn is the whole conversation so far.
    backend_calls = [len(t.prompt_ids) for t in record.turns]
    assert backend_calls[0] == len(chat.first_prompt_ids(tokenizer, prompts.render_first_prompt(SUM, "codecontests")))


def test_random_feedback_uses_another_problems_wrong_program(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.random_feedback=true")
    other = PROBLEMS["reverse_string"]  # its wrong program echoes the input line
    pool = [SUM, other]
    (record,), _ = run(config, tokenizer, executor_service, by_turn(WRONG, RIGHT), [SUM], feedback_problems=pool)
    # Reference: the other problem's wrong program run on ITS OWN public tests, rendered as its feedback:
    # nothing of this problem's tests may leak into the ablation's feedback.
    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, executor_service.frontend, client_id="ref", timeout_s=30)
        job = ExecutionJob(job_id="ref-random-feedback", code=other.incorrect_solutions[0], tests=other.public_tests,
                           limits=Limits(time_s=2, memory_bytes=config.executor.default_memory_limit_bytes))
        result = client.run_sync(job)
        client.close()
    expected = prompts.render_feedback(other, other.public_tests, result, max_chars=config.prompt.feedback_max_chars)
    assert record.turns[0].feedback == expected
    assert all(t.input not in expected and t.output not in expected for t in SUM.public_tests)
    assert record.turns[0].outcome.status == "wrong_answer"  # the turn's own outcome stays real
    # The episode still stops when the REAL public tests pass.
    assert [t.outcome.status for t in record.turns] == ["wrong_answer", "pass"]
    assert record.rollout.random_feedback and record.rollout.rewards == [0.0, 1.0]


def _drain(sock) -> list[ExecutionJob]:
    """Every job queued on a test ROUTER (identity frame, job frame)."""
    jobs = []
    while sock.poll(0):
        _identity, frame = sock.recv_multipart()
        jobs.append(decode(frame, ExecutionJob))
    return jobs


def test_executor_that_never_answers_drops_the_episode_after_retries(tiny_model_dir, tokenizer):
    """Issue 11 item 4: an executor timeout is resent (bounded), then the episode is dropped and counted:
    never a -1 reward, never "execution environment error" shown to the model."""
    from rlef.monitoring import metrics_actor as M

    config = actor_config(tiny_model_dir, "actor.max_turns=2", "actor.sandbox_retries=2", "actor.sandbox_retry_backoff_s=0")
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)  # accepts jobs, never replies
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    dropped0 = M.EPISODES_DROPPED.labels("sandbox_error")._value.get()
    retries0 = M.SANDBOX_RETRIES._value.get()
    try:
        records, runner = asyncio.run(
            _episodes(config, tokenizer, f"tcp://127.0.0.1:{port}", by_turn(RIGHT), [SUM], timeout_s=0.5)
        )
        jobs = _drain(silent)
    finally:
        silent.close(0)
        ctx.term()
    assert records == [] and runner.errors == []
    assert runner.dropped == [("sum_of_two", "sandbox_error")]
    # The first turn's job, then its two resends under fresh ids; no second turn, no final scoring.
    assert [j.job_id for j in jobs] == ["actor-t-n0-1-t1", "actor-t-n0-1-t1-a1", "actor-t-n0-1-t1-a2"]
    assert M.EPISODES_DROPPED.labels("sandbox_error")._value.get() - dropped0 == 1
    assert M.SANDBOX_RETRIES._value.get() - retries0 == 2


class _FlakyProxy:
    """A ROUTER in front of the real broker that answers the first ``failures`` jobs itself with a
    sandbox_error result (as the broker does for a job whose executor died) and forwards every other one."""

    def __init__(self, backend: str, failures: int):
        import threading

        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.connect(backend)
        self.failures = failures
        self.seen: list[str] = []
        self._peers: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from rlef.common.protocol.messages import ExecutionResult

        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                if sock is self.front:
                    identity, frame = self.front.recv_multipart()
                    job = decode(frame, ExecutionJob)
                    self.seen.append(job.job_id)
                    if len(self.seen) <= self.failures:
                        result = ExecutionResult(job_id=job.job_id, compile_ok=True, tests_total=len(job.tests or []),
                                                 error="worker died twice; giving up")
                        self.front.send_multipart([identity, encode(result)])
                    else:
                        self._peers[job.job_id] = identity
                        self.back.send(frame)
                else:
                    frame = self.back.recv()
                    result = decode(frame, ExecutionResult)
                    self.front.send_multipart([self._peers.pop(result.job_id), frame])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


def test_a_transient_sandbox_error_is_resent_and_the_episode_scored_on_the_real_result(tiny_model_dir, tokenizer, executor_service):
    from rlef.monitoring import metrics_actor as M

    config = actor_config(tiny_model_dir, "actor.sandbox_retries=2", "actor.sandbox_retry_backoff_s=0")
    proxy = _FlakyProxy(executor_service.frontend, failures=1)
    retries0 = M.SANDBOX_RETRIES._value.get()
    try:
        (record,), runner = asyncio.run(
            _episodes(config, tokenizer, f"tcp://127.0.0.1:{proxy.port}", by_turn(RIGHT), [SUM])
        )
    finally:
        proxy.close()
    assert runner.dropped == [] and runner.errors == []
    assert proxy.seen[:2] == ["actor-t-n0-1-t1", "actor-t-n0-1-t1-a1"]
    assert [t.outcome.status for t in record.turns] == ["pass"] and record.rollout.rewards == [1.0]
    assert record.rollout.final.passed
    assert M.SANDBOX_RETRIES._value.get() - retries0 == 1


def test_one_job_per_turn_carries_the_final_tests_gated_on_the_public_ones(tiny_model_dir, tokenizer, executor_service):
    """No separate scoring job: a turn's job holds the private tests behind the public ones (run when those pass,
    or at the last turn), the feedback and the turn's outcome see the public part only."""
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=1")
    proxy = _FlakyProxy(executor_service.frontend, failures=0)
    public_only = fenced("print(3)")  # the public test is `1 2` -> 3; the private ones want other sums
    lucky = dataclasses.replace(SUM, problem_id="lucky", description="[lucky] " + SUM.description)
    never = dataclasses.replace(SUM, problem_id="never", description="[never] " + SUM.description)
    scripts = {"lucky": (public_only,), "never": (WRONG,)}

    def script(text: str, turn: int) -> str:
        return scripts[text.split("[", 1)[1].split("]", 1)[0]][0]

    try:
        records, runner = asyncio.run(
            _episodes(config, tokenizer, f"tcp://127.0.0.1:{proxy.port}", script, [lucky, never]))
    finally:
        proxy.close()
    assert runner.errors == [] and runner.dropped == []
    n_final = len(SUM.public_tests) + len(SUM.private_tests)
    assert proxy.seen == ["actor-t-n0-1-t1", "actor-t-n0-2-t1", "actor-t-n0-2-t2", "actor-t-n0-2-t3"]
    first, failed = records
    # Passing the public test ends the episode; the same job already scored it on the private tests.
    assert [t.outcome.status for t in first.turns] == ["pass"] and first.rollout.rewards == [-1.0]
    assert first.rollout.final.tests_total == n_final and first.rollout.final.tests_passed == 1
    assert first.rollout.final.status == "wrong_answer" and len(first.turns[0].scored.tests) == n_final
    # Failing turns ran the public test only; the last turn ran every final test.
    assert [len(t.scored.tests) for t in failed.turns] == [1, 1, n_final]
    assert [len(t.result.tests) for t in failed.turns] == [1, 1, 1]
    assert failed.rollout.final.tests_total == n_final and not failed.rollout.final.passed
    assert "Expected output `3\n` but got `-1\n`" in failed.turns[0].feedback
    assert failed.turns[0].feedback.count("- input") == 1


def test_a_refused_job_is_not_resent_and_the_episode_is_dropped(tiny_model_dir, tokenizer, executor_service):
    """A refusal would be refused again: no resend; the episode is dropped as "refused", nothing is scored."""
    from rlef.monitoring import metrics_actor as M

    config = actor_config(tiny_model_dir, "actor.sandbox_retries=2", "actor.sandbox_retry_backoff_s=0")
    too_long = dataclasses.replace(SUM, problem_id="too-long", time_limit_s=config.executor.max_time_limit_s * 2)
    retries0 = M.SANDBOX_RETRIES._value.get()
    records, runner = run(config, tokenizer, executor_service, by_turn(RIGHT), [too_long, SUM], caps=config.executor)
    assert runner.dropped == [("too-long", "refused")]
    assert [r.problem.problem_id for r in records] == ["sum_of_two"] and records[0].rollout.final.passed
    assert M.SANDBOX_RETRIES._value.get() - retries0 == 0


def test_problem_without_tests_is_skipped_and_the_actor_goes_on(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "actor.episodes_in_flight=1")
    empty = dataclasses.replace(SUM, problem_id="no-tests", public_tests=[], private_tests=[])
    records, runner = run(config, tokenizer, executor_service, by_turn(RIGHT), [empty, SUM])
    assert runner.skipped == [("no-tests", "no_public_tests")]
    assert [r.problem.problem_id for r in records] == ["sum_of_two"] and records[0].rollout.final.passed


def test_prompt_longer_than_the_context_is_skipped(tiny_model_dir, tokenizer, executor_service):
    config = actor_config(tiny_model_dir, "model.max_seq_len=64")
    records, runner = run(config, tokenizer, executor_service, by_turn(RIGHT), [SUM])
    assert records == [] and runner.skipped == [("sum_of_two", "prompt_too_long")]
