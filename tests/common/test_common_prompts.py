"""Prompt, feedback and code-extraction text against literal expected strings (the paper's wording)."""

from __future__ import annotations

import pytest

from rlef.common.protocol.messages import ExecutionResult
from rlef.common.protocol.messages import TestCase as Case  # aliased: pytest would try to collect Test* names
from rlef.common.protocol.messages import TestResult as Outcome
from rlef.common.data.problems import Problem
from rlef.common.text.prompts import (
    extract_code,
    render_feedback,
    render_first_prompt,
    render_no_code_feedback,
    truncate,
)

INSTR = "Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. Use the backticks for your code only."


def _problem(**kw) -> Problem:
    base = dict(
        problem_id="p1",
        dataset="sample",
        split="train",
        description="Print the sum of two integers.",
        public_tests=[Case(input="1 2\n", output="3\n")],
        private_tests=[Case(input="2 2\n", output="4\n")],
    )
    base.update(kw)
    return Problem(**base)


def _result(tests: list[Outcome], *, total: int | None = None, compile_ok: bool = True, compile_message: str = "", error: str = "") -> ExecutionResult:
    return ExecutionResult(
        job_id="j",
        compile_ok=compile_ok,
        compile_message=compile_message,
        tests=tests,
        tests_total=len(tests) if total is None else total,
        error=error,
    )


# ---------------------------------------------------------------- first turn


def test_codecontests_first_prompt_is_the_papers_template():
    text = render_first_prompt(_problem(), "codecontests")
    assert text == (
        "Provide a Python solution for the following competitive programming question: Print the sum of two integers..\n\n"
        + INSTR
    )


def test_humaneval_first_prompt_and_prefill_shape():
    p = _problem(description="def f(x):\n    \"\"\"Return x.\"\"\"\n", kind="function", prefill="```python\ndef f(x):\n    \"\"\"Return x.\"\"\"\n")
    text = render_first_prompt(p, "humaneval")
    assert text == 'Complete the following Python function:\n```python\ndef f(x):\n    """Return x."""\n```\n\n' + INSTR


def test_mbpp_first_prompt_lists_public_asserts():
    p = _problem(description="Write a function f that doubles x.", kind="function",
                 public_tests=[Case(input="assert f(2) == 4\n", output="")])
    assert render_first_prompt(p, "mbpp") == (
        "Write a function f that doubles x.\nYour code should pass these tests:\n\nassert f(2) == 4\n\n" + INSTR
    )


def test_unknown_template_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt template"):
        render_first_prompt(_problem(), "apps")


# ---------------------------------------------------------------- codecontests feedback: the four paper forms


TESTS = [
    Case(input="1 2\n", output="3\n"),
    Case(input="5 5\n", output="10\n"),
    Case(input="7 8\n", output="15\n"),
    Case(input="9 9\n", output="18\n"),
    Case(input="0 0\n", output="0\n"),
]


def test_codecontests_feedback_all_four_forms():
    result = _result(
        [
            Outcome(status="wrong_answer", stdout="-1\n"),
            Outcome(status="runtime_error", stderr="Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n", exit_code=1),
            Outcome(status="timeout"),
            Outcome(status="oom"),
            Outcome(status="pass", stdout="0\n"),
        ]
    )
    text = render_feedback(_problem(), TESTS, result, max_chars=100, max_tests=None, template="codecontests")
    assert text == (
        "Your code failed the following tests:\n\n"
        "- input `1 2\n` failed:\nExpected output `3\n` but got `-1\n`\n"
        "- input `5 5\n` failed:\nTraceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n"
        "- input `7 8\n` failed: Execution took too long.\n"
        "- input `9 9\n` failed: Out of memory.\n\n"
        "Give it another try.\n" + INSTR
    )


def test_codecontests_feedback_our_forms_output_limit_and_sandbox_test():
    result = _result([Outcome(status="output_limit", stdout="x" * 10), Outcome(status="sandbox_error")])
    text = render_feedback(_problem(), TESTS[:2], result, max_chars=100, max_tests=None, template="codecontests")
    assert text == (
        "Your code failed the following tests:\n\n"
        "- input `1 2\n` failed: Output limit exceeded.\n"
        "- input `5 5\n` failed: Execution failed (sandbox error).\n\n"
        "Give it another try.\n" + INSTR
    )


def test_max_tests_caps_bullets_and_early_stop_is_handled():
    result = _result([Outcome(status="timeout"), Outcome(status="timeout")], total=5)
    text = render_feedback(_problem(), TESTS, result, max_chars=100, max_tests=1, template="codecontests")
    assert text == (
        "Your code failed the following tests:\n\n- input `1 2\n` failed: Execution took too long.\n\nGive it another try.\n" + INSTR
    )


def test_syntax_error_no_code_and_sandbox_job_wording():
    result = _result([], total=2, compile_ok=False, compile_message='  File "main.py", line 1\n    def f(\n         ^\nSyntaxError: \'(\' was never closed\n')
    text = render_feedback(_problem(), TESTS[:2], result, max_chars=1000, max_tests=None, template="codecontests")
    assert text == (
        "Your code could not be compiled:\n"
        '  File "main.py", line 1\n    def f(\n         ^\nSyntaxError: \'(\' was never closed\n\n'
        "Give it another try.\n" + INSTR
    )
    assert render_no_code_feedback("codecontests") == (
        "Your response did not contain any code enclosed in triple backticks.\n\nGive it another try.\n" + INSTR
    )
    sandbox = _result([], total=2, error="nsjail exited 255")
    assert render_feedback(_problem(), TESTS[:2], sandbox, max_chars=100, max_tests=None, template="codecontests") == (
        "Your code could not be run because of an error in the execution environment.\n\nGive it another try.\n" + INSTR
    )


def test_passing_result_has_no_feedback():
    result = _result([Outcome(status="pass", stdout="3\n")])
    with pytest.raises(ValueError, match="passing"):
        render_feedback(_problem(), TESTS[:1], result, max_chars=100, max_tests=None, template="codecontests")


def test_truncation_is_visible_and_bounded():
    long_in = "1 " * 1000 + "\n"
    long_out = "9" * 500
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 200 + "RecursionError: maximum recursion depth exceeded\n"
    tests = [Case(input=long_in, output="x\n"), Case(input="a\n", output="b\n")]
    result = _result([Outcome(status="wrong_answer", stdout=long_out), Outcome(status="runtime_error", stderr=trace)])
    text = render_feedback(_problem(), tests, result, max_chars=20, max_tests=None, template="codecontests")
    assert text == (
        "Your code failed the following tests:\n\n"
        f"- input `{'1 ' * 10}[... {len(long_in) - 20} more characters truncated]` failed:\n"
        f"Expected output `x\n` but got `{'9' * 20}[... 480 more characters truncated]`\n"
        f"- input `a\n` failed:\n[... {len(trace) - 1 - 20} characters truncated ...]rsion depth exceeded\n\n"
        "Give it another try.\n" + INSTR
    )
    assert truncate("abc", 3) == "abc"
    assert truncate("abcd", 3) == "abc[... 1 more characters truncated]"
    assert truncate("abcd", 3, keep="tail") == "[... 1 characters truncated ...]bcd"


# ---------------------------------------------------------------- HumanEval+ / MBPP+ feedback


def test_plus_feedback_failure_and_success_bullets():
    tests = [
        Case(input="candidate = f\nMETADATA = {}\nassert candidate(1) == 2\n", output=""),
        Case(input="candidate = f\nassert candidate(2) == 4\n", output=""),
        Case(input="candidate = f\nassert candidate(3) == 6\n", output=""),
        Case(input="candidate = f\nimport math\nfor x in range(3):\n    assert candidate(x) == 2 * x\n", output=""),
    ]
    result = _result(
        [
            Outcome(status="runtime_error", stderr='Traceback (most recent call last):\n  File "<test>", line 3, in <module>\nAssertionError\n'),
            Outcome(status="pass"),
            Outcome(status="runtime_error", stderr="Traceback (most recent call last):\nTypeError: bad operand\n"),
            Outcome(status="timeout"),
        ]
    )
    text = render_feedback(_problem(kind="function"), tests, result, max_chars=200, max_tests=None, template="humaneval")
    assert text == (
        "Your code failed some test cases:\n"
        "- Failure: assert candidate(1) == 2\n"
        "- Success: assert candidate(2) == 4\n"
        "- Failure: assert candidate(3) == 6\nTypeError: bad operand\n"
        "- Failure: for x in range(3):\n    assert candidate(x) == 2 * x\nExecution took too long.\n\n"
        "Give it another try.\n" + INSTR
    )
    assert render_feedback(_problem(kind="function"), tests, result, max_chars=200, max_tests=None, template="mbpp") == text


# ---------------------------------------------------------------- code extraction


@pytest.mark.parametrize(
    "response, last, first",
    [
        ("```python\nprint(1)\n```", "print(1)\n", "print(1)\n"),
        ("a\n```python\nx = 1\n```\nthen\n```python\nx = 2\n```\nend", "x = 2\n", "x = 1\n"),
        ("```py\nprint(2)\n```", "print(2)\n", "print(2)\n"),
        ("```Python3\nprint(3)\n```", "print(3)\n", "print(3)\n"),
        ("```\nprint(4)\n```", "print(4)\n", "print(4)\n"),
        ("```python\n\n\n  indented = 1\n\n```", "  indented = 1\n", "  indented = 1\n"),
        ("```python\nprint(5)```", "print(5)\n", "print(5)\n"),  # closing fence right after code
        ("```python\nx = 1\n```\n```cpp\nint main(){}\n```", "x = 1\n", "x = 1\n"),  # other languages skipped
        ("```python\nok = 1\n```\n```python\nunclosed = 2\n", "ok = 1\n", "ok = 1\n"),  # unclosed: incomplete
        ("```python\r\nprint(6)\r\n```", "print(6)\n", "print(6)\n"),
    ],
)
def test_extract_code_rules(response, last, first):
    assert extract_code(response) == last
    assert extract_code(response, "first") == first


@pytest.mark.parametrize(
    "response",
    [
        "no code here",
        "```python\nprint(1)\n",  # never closed
        "```python print(1) ```",  # one-line form
        "```python\n   \n```",  # empty
        "```java\nclass A {}\n```",
        "",
    ],
)
def test_extract_code_none(response):
    assert extract_code(response) is None
