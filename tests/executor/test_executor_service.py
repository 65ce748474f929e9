"""The executor service end to end: real broker and executor processes, real ZeroMQ, real nsjail.

Correctness on real data (all of HumanEval, the bundled sample problems), broken variants, bad input,
oversize jobs, garbage on the wire, concurrency through one client, and a requester that never hangs.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
import zmq

from rlef.common.config import TransportConfig
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.execution_client import TIMEOUT_ERROR, ExecutionClient
from rlef.common.protocol.messages import Control, ExecutionJob, Limits, encode
from rlef.common.protocol.messages import TestsRef as Ref
from rlef.common.protocol.messages import TestCase as Case
from rlef.common.protocol.transport import Transport

LIMITS = Limits(time_s=5.0, memory_bytes=256 << 20)


def job(code: str, tests: list[Case] | None = None, ref: Ref | None = None, **kw) -> ExecutionJob:
    return ExecutionJob(job_id=uuid.uuid4().hex, code=code, tests=tests, tests_ref=ref, limits=kw.pop("limits", LIMITS), **kw)


def humaneval_ref(problem_id: str) -> Ref:
    return Ref(dataset="humaneval", split="train", problem_id=problem_id, test_set="public+private")


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass(sync_client: ExecutionClient) -> None:
    problems = load_problems("humaneval")
    assert len(problems) == 164
    jobs = [job(p.solutions[0], ref=humaneval_ref(p.problem_id)) for p in problems]
    results = sync_client.run_many_sync(jobs)
    failed = {p.problem_id: (r.status, r.error, r.tests[-1].stderr[-300:] if r.tests else r.compile_message)
              for p, r in zip(problems, results) if not r.passed}
    assert not failed
    assert all(r.tests_total == len(p.public_tests) + len(p.private_tests) for p, r in zip(problems, results))


def _break_body(solution: str, entry_point: str, body: str) -> str:
    """Replace the body of ``entry_point`` with ``body`` (keeps the prompt's imports and helpers)."""
    head = re.search(rf"^def {re.escape(entry_point)}\(.*?\).*?:\s*\n", solution, re.S | re.M)
    assert head is not None
    return solution[: head.end()] + body + "\n"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("    return None", "runtime_error"),  # assertion fails -> AssertionError traceback
        ("    raise ValueError('broken')", "runtime_error"),
        ("    while True:\n        pass", "timeout"),
        ("    return [0] * (1 << 40)", "oom"),
        ("    return (", "syntax_error"),
    ],
)
def test_broken_humaneval_variants_get_their_class(sync_client: ExecutionClient, body: str, status: str) -> None:
    problem = load_problems("humaneval")[2]  # truncate_number
    code = _break_body(problem.solutions[0], problem.entry_point or "", body)
    result = sync_client.run_sync(job(code, ref=humaneval_ref(problem.problem_id), limits=Limits(time_s=1.0, memory_bytes=256 << 20)))
    assert result.status == status, result
    if status == "runtime_error":
        assert 'File "<test>", line' in result.tests[0].stderr or "ValueError: broken" in result.tests[0].stderr


@pytest.mark.slow
def test_sample_reference_solutions_pass(sync_client: ExecutionClient) -> None:
    jobs, ids = [], []
    for split in ("train", "valid", "test"):
        for p in load_problems("sample", split=split):
            ref = Ref(dataset="sample", split=split, problem_id=p.problem_id, test_set="all")
            limits = Limits(time_s=p.time_limit_s or 2.0, memory_bytes=p.memory_limit_bytes or (256 << 20))
            for code in p.solutions:
                jobs.append(job(code, ref=ref, limits=limits))
                ids.append(p.problem_id)
    assert len(jobs) >= 24
    results = sync_client.run_many_sync(jobs)
    failed = [(pid, r.status, r.error, r.tests[-1].stderr[-200:] if r.tests else "") for pid, r in zip(ids, results) if not r.passed]
    assert not failed


def test_unknown_problem_is_a_clear_error(sync_client: ExecutionClient) -> None:
    result = sync_client.run_sync(job("print(1)", ref=humaneval_ref("HumanEval/99999")))
    assert result.status == "sandbox_error"
    assert "HumanEval/99999" in result.error


# ---------------------------------------------------------------- bad input


def test_bad_programs_get_clear_statuses(sync_client: ExecutionClient) -> None:
    tests = [Case(input="", output="abc")]
    results = sync_client.run_many_sync([
        job("import sys\nsys.stdout.buffer.write(b'\\xff\\x00abc')", tests),
        job("", tests),
        job("", [Case(input="", output="")]),
        job("#include <stdio.h>\nint main() { printf(\"abc\"); }", tests),
        job("print('abc')\x00", tests),
        job("print('abc')", []),
    ])
    assert [r.status for r in results] == ["wrong_answer", "wrong_answer", "pass", "syntax_error", "syntax_error", "pass"]
    assert "\x00abc" in results[0].tests[0].stdout
    assert "SyntaxError" in results[3].compile_message
    assert results[5].tests_total == 0


def test_oversize_jobs_are_rejected_clearly(sync_client: ExecutionClient) -> None:
    too_many = job("print(1)", [Case(input="", output="1")] * 501)
    too_long = job("x = 1\n" * 40_000, [Case(input="", output="")])
    results = sync_client.run_many_sync([too_many, too_long])
    assert [r.status for r in results] == ["sandbox_error", "sandbox_error"]
    assert "max_tests_per_job" in results[0].error
    assert "max_code_bytes" in results[1].error


def test_garbage_on_the_wire_is_dropped_and_service_continues(executor_service, sync_client: ExecutionClient) -> None:
    backend_port = next(o for o in executor_service.overrides if "backend_port" in o).split("=")[1]
    with Transport(TransportConfig()) as transport:
        front = transport.client(zmq.DEALER, executor_service.frontend)
        back = transport.client(zmq.DEALER, f"tcp://127.0.0.1:{backend_port}", identity=b"rogue-worker")
        front.send(b"not msgpack at all")
        front.send_multipart([b"two", b"frames"])
        front.send(encode(Control(op="heartbeat", sender_id="x", role="actor")))  # wrong kind for the frontend
        back.send(b"\x92\x01\x02")
        back.send(encode(job("print(1)", [])))  # a job is not something workers send
        time.sleep(0.5)
        front.close(0)
        back.close(0)
    result = sync_client.run_sync(job("print(2)", [Case(input="", output="2")]))
    assert result.status == "pass"
    assert "dropped a message" in executor_service.logs()


# ---------------------------------------------------------------- client behaviour


def test_many_concurrent_async_jobs_are_matched(executor_endpoint: str) -> None:
    async def main() -> list:
        with Transport(TransportConfig(), asyncio=True) as transport:
            client = ExecutionClient(transport, executor_endpoint, client_id="async", timeout_s=120)
            try:
                jobs = [job("print(input())", [Case(input=f"job{i}", output=f"job{i}")]) for i in range(40)]
                return list(zip(jobs, await client.run_many(jobs)))
            finally:
                client.close()

    pairs = asyncio.run(main())
    assert all(j.job_id == r.job_id and r.passed for j, r in pairs)
    assert {r.worker_id.rsplit("/", 1)[0] for _, r in pairs} >= {"test-executor-0/0", "test-executor-0/1"}


def test_client_never_hangs_without_a_broker() -> None:
    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="lonely", timeout_s=0.3)
        results = client.run_many_sync([job("print(1)", [Case(input="", output="1")]) for _ in range(3)])
        client.close()
    assert [r.error for r in results] == [TIMEOUT_ERROR] * 3
    assert all(r.status == "sandbox_error" for r in results)
    assert client.timeouts == 3


def test_async_client_never_hangs_without_a_broker() -> None:
    async def main():
        with Transport(TransportConfig(), asyncio=True) as transport:
            client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="lonely", timeout_s=0.3)
            try:
                return await client.run(job("print(1)", [Case(input="", output="1")])), client.timeouts
            finally:
                client.close()

    result, timeouts = asyncio.run(main())
    assert result.error == TIMEOUT_ERROR and timeouts == 1


def test_client_never_hangs_on_a_full_send_queue() -> None:
    jobs = [job("print(1)", [Case(input="", output="1")]) for _ in range(5)]
    with Transport(TransportConfig(sndhwm=1)) as transport:
        client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="full", timeout_s=0.3)
        results = client.run_many_sync(jobs)
        client.close()
    assert [r.error for r in results] == [TIMEOUT_ERROR] * 5

    async def main():
        with Transport(TransportConfig(sndhwm=1), asyncio=True) as transport:
            client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="full", timeout_s=0.3)
            try:
                return await client.run_many(jobs)
            finally:
                client.close()

    assert [r.error for r in asyncio.run(main())] == [TIMEOUT_ERROR] * 5


def test_make_job_inline_and_by_reference_agree(sync_client: ExecutionClient) -> None:
    from rlef.common.config import ExecutorConfig
    from rlef.common.protocol.execution_client import limits_for, make_job

    config = ExecutorConfig()
    human = load_problems("humaneval")[5]
    sample = load_problems("sample")[0]
    assert limits_for(human, config) == Limits(time_s=config.default_time_limit_s, memory_bytes=config.default_memory_limit_bytes)
    assert limits_for(sample, config).time_s == sample.time_limit_s
    jobs = []
    for problem in (human, sample):
        for code in (problem.solutions[0], "print('nope')"):
            for inline in (False, True):
                jobs.append(make_job(problem, code, "public+private", limits_for(problem, config), inline=inline))
    statuses = [r.status for r in sync_client.run_many_sync(jobs)]
    assert statuses == ["pass", "pass", "runtime_error", "runtime_error", "pass", "pass", "wrong_answer", "wrong_answer"]
