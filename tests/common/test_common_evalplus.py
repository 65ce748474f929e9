"""HumanEval+ / MBPP+ from EvalPlus release files (tests/fixtures/evalplus: two tasks each in the published
layout): problems, public/private split, the paper's templates, clear errors; and (slow) the tests through the
real sandbox: canonical solutions pass every test, a wrong one fails a differential test, floats within atol pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlef.common.text import prompts
from rlef.common.data.loaders import clear_cache, load_problems
from rlef.common.errors import DataError
from rlef.common.data.evalplus import differential_test, evalplus_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evalplus"
HE = FIXTURES / "HumanEvalPlus-mini.jsonl"
MBPP = FIXTURES / "MbppPlus-mini.jsonl"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_humanevalplus_problems_and_template():
    problems = load_problems("humanevalplus", str(HE), "test")
    assert [p.problem_id for p in problems] == ["HumanEval/0", "HumanEval/2"]
    p = problems[0]
    assert p.kind == "function" and p.entry_point == "has_close_elements" and p.dataset == "humanevalplus"
    # Public: the first assert of the original check; private: the other two, then 3 base + 2 plus inputs.
    assert len(p.public_tests) == 1 and "== True" in p.public_tests[0].input
    assert len(p.private_tests) == 2 + 5
    assert p.prefill == "```python\n" + p.description and p.solutions[0].endswith("    return False\n")
    first = prompts.render_first_prompt(p, "humaneval")
    assert first.startswith("Complete the following Python function:\n```python\nfrom typing import List")


def test_mbppplus_problems_and_template():
    problems = load_problems("mbppplus", str(FIXTURES), "test")  # a directory holding the release file
    assert [p.problem_id for p in problems] == ["Mbpp/3", "Mbpp/2"]
    p = problems[0]
    assert p.description == "Write a python function to identify non-prime numbers."
    assert [t.input for t in p.public_tests] == ["assert is_not_prime(2) == False\n"]
    assert len(p.private_tests) == 3 + 7  # the other original asserts, then 4 base + 3 plus inputs
    text = prompts.render_first_prompt(p, "mbpp")
    assert text.startswith("Write a python function to identify non-prime numbers.\nYour code should pass these tests:\n\n"
                           "assert is_not_prime(2) == False\n\n")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope.jsonl")):
        load_problems("humanevalplus", str(tmp_path / "nope.jsonl"), "test")
    with pytest.raises(DataError, match=f"no MbppPlus.*{tmp_path}"):
        evalplus_file("mbppplus", str(tmp_path))
    with pytest.raises(DataError, match="needs data.path"):
        load_problems("humanevalplus", None, "test")


def test_malformed_records_name_the_line(tmp_path):
    row = json.loads(HE.read_text().splitlines()[0])
    del row["base_input"]
    bad = tmp_path / "HumanEvalPlus-bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"line 1 \('HumanEval/0'\): missing field\(s\) base_input"):
        load_problems("humanevalplus", str(bad), "test")


def test_differential_test_is_valid_python():
    import ast

    text = differential_test("f", "def f(x):\n    return x\n", [[1, 2], {"a": float("inf")}], 1e-6)
    ast.parse(text)
    with pytest.raises(ValueError, match="list of arguments"):
        differential_test("f", "def f(x): return x\n", {"x": 1}, 0)


@pytest.mark.slow
def test_tests_through_the_real_sandbox(tmp_path):
    from helpers.executor_service import start_executor_service

    from rlef.common.config import TransportConfig
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.messages import ExecutionJob, Limits
    from rlef.common.protocol.transport import Transport

    problems = {p.problem_id: p for name, f in (("humanevalplus", HE), ("mbppplus", MBPP)) for p in load_problems(name, str(f), "test")}
    with start_executor_service(tmp_path / "svc", workers=2) as service, Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, service.frontend, client_id="evalplus-test", timeout_s=60)
        try:
            def run(pid: str, code: str):
                p = problems[pid]
                job = ExecutionJob(job_id=f"{pid}-{abs(hash(code))}", code=p.program(code), tests=p.tests("public+private"),
                                   limits=Limits(time_s=5, memory_bytes=256 << 20))
                return client.run_sync(job)

            for pid, p in problems.items():
                result = run(pid, p.solutions[0])
                assert result.passed, (pid, [(t.status, t.stderr[-300:]) for t in result.tests if t.status != "pass"])
            # Within atol of the reference's floats: passes; a wrong program fails a differential (private) test.
            assert run("HumanEval/2", "def truncate_number(number):\n    return number - int(number)\n").passed
            # Right on every original assert, wrong on the plus inputs 1 and 7921 = 89 * 89.
            wrong = run("Mbpp/3", "def is_not_prime(n):\n    return any(n % d == 0 and n != d for d in (2, 3, 5))\n")
            failed = [i for i, t in enumerate(wrong.tests) if t.status != "pass"]
            assert failed == [8, 10] and "returned False, expected True" in wrong.tests[10].stderr
        finally:
            client.close()
