"""Prompt and feedback text of every benchmark format, and code extraction from responses.

This is the ONLY place where user-visible episode text is made: the executor returns statuses and raw
outputs (:class:`~rlef.common.protocol.messages.ExecutionResult`), the actor turns them into the next user message
with :func:`render_feedback`.

Templates (``template`` argument; config ``prompt.template``):

``codecontests`` -- the paper's templates, verbatim (Gehring et al. 2025, appendix; see
    docs/reference rlef-method.md). Turn 1::

        Provide a Python solution for the following competitive programming question: ${problem}.

        Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. Use the backticks for your code only.

    Feedback: ``Your code failed the following tests:`` then one bullet per failing public test in the
    four paper forms (wrong answer / exception with its stack trace / ``Execution took too long.`` /
    ``Out of memory.``), then ``Give it another try.`` and the format instruction again.

``humaneval`` / ``mbpp`` -- the paper's HumanEval+/MBPP+ forms: ``Your code failed some test cases:``
    with one ``- Failure: ...`` / ``- Success: ...`` bullet per public test that ran. The paper gives no
    more than that; the wording around it is ours (see the constants below).

Our own wording (the paper is silent; documented here and in docs/):

- syntax error (no test ran): :data:`SYNTAX_ERROR_FEEDBACK`;
- a response without a code block: :data:`NO_CODE_FEEDBACK`;
- a test that wrote more than the executor's output cap: ``Output limit exceeded.``;
- a sandbox error (our infrastructure failed, not the program): ``Execution failed (sandbox error).``
  per test, or :data:`SANDBOX_ERROR_FEEDBACK` for a whole job. The actor should normally retry such jobs
  rather than show them; the text exists so that a rendered episode is never silently wrong.

Inputs and outputs go in raw, trailing newline included (as the paper does). Each input / expected output /
observed output / stack trace is capped at ``max_chars`` characters; a cut is marked visibly with
:func:`truncate` (head kept for inputs and outputs, tail kept for stack traces, whose last lines name the
error).
"""

from __future__ import annotations

import ast
import re
from typing import Literal

from rlef.common.protocol.messages import ExecutionResult, TestCase, TestResult
from rlef.common.data.problems import Problem

Template = Literal["codecontests", "humaneval", "mbpp"]
TEMPLATES: tuple[str, ...] = ("codecontests", "humaneval", "mbpp")

FORMAT_INSTRUCTION = (
    "Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
    "Use the backticks for your code only."
)
CODECONTESTS_FIRST = (
    "Provide a Python solution for the following competitive programming question: {problem}.\n\n" + FORMAT_INSTRUCTION
)
RETRY = "Give it another try.\n" + FORMAT_INSTRUCTION
CODECONTESTS_FEEDBACK_HEADER = "Your code failed the following tests:"
PLUS_FEEDBACK_HEADER = "Your code failed some test cases:"

# HumanEval: the user asks for the function; the response is pre-filled with an opened python fence and the
# prompt (Problem.prefill), so the model continues the function body and closes the fence.
HUMANEVAL_FIRST = "Complete the following Python function:\n```python\n{problem}```\n\n" + FORMAT_INSTRUCTION
# MBPP (the usual MBPP prompt: the task and its public asserts).
MBPP_FIRST = "{problem}\nYour code should pass these tests:\n\n{tests}\n\n" + FORMAT_INSTRUCTION

# Our wording where the paper is silent.
SYNTAX_ERROR_FEEDBACK = "Your code could not be compiled:\n{message}\n\n" + RETRY
NO_CODE_FEEDBACK = "Your response did not contain any code enclosed in triple backticks.\n\n" + RETRY
SANDBOX_ERROR_FEEDBACK = "Your code could not be run because of an error in the execution environment.\n\n" + RETRY
OUTPUT_LIMIT_TEXT = "Output limit exceeded."
SANDBOX_ERROR_TEXT = "Execution failed (sandbox error)."
TIMEOUT_TEXT = "Execution took too long."
OOM_TEXT = "Out of memory."


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r} (known: {', '.join(TEMPLATES)})")


# ---------------------------------------------------------------- truncation


def truncate(text: str, max_chars: int, *, keep: Literal["head", "tail"] = "head") -> str:
    """``text`` if it has at most ``max_chars`` characters, else its head (or tail) with a visible marker.

    The marker says how many characters were cut: ``[... 1234 more characters truncated]`` after a head,
    ``[... 1234 characters truncated ...]`` before a tail. The result may exceed ``max_chars`` by the
    marker's length only.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    if keep == "head":
        return f"{text[:max_chars]}[... {cut} more characters truncated]"
    return f"[... {cut} characters truncated ...]{text[-max_chars:]}"


# ---------------------------------------------------------------- first turn


def render_first_prompt(problem: Problem, template: Template | str) -> str:
    """The turn-1 user message of ``problem`` (the description goes in as-is).

    For ``humaneval`` the assistant response must start with ``problem.prefill`` (the actor passes it to
    :func:`rlef.common.text.chat.first_prompt_ids`), and code extraction runs on ``prefill + generated text``.
    """
    _check_template(template)
    if template == "codecontests":
        return CODECONTESTS_FIRST.format(problem=problem.description)
    if template == "humaneval":
        return HUMANEVAL_FIRST.format(problem=_with_newline(problem.description))
    tests = "\n".join(t.input.strip("\n") for t in problem.public_tests)
    return MBPP_FIRST.format(problem=problem.description.rstrip("\n"), tests=tests)


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


# ---------------------------------------------------------------- feedback


def render_no_code_feedback(template: Template | str = "codecontests") -> str:
    """The next user message after a response without a (complete) python code block."""
    _check_template(template)
    return NO_CODE_FEEDBACK


def render_feedback(
    problem: Problem,
    tests: list[TestCase],
    result: ExecutionResult,
    *,
    max_chars: int,
    max_tests: int | None = None,
    template: Template | str = "codecontests",
) -> str:
    """The next user message after ``result``, the run of a program on the public ``tests``.

    ``result.tests[i]`` is the outcome of ``tests[i]`` (the executor keeps job order; it may stop early, so
    ``result.tests`` can be shorter). ``codecontests`` lists failing tests only; ``humaneval``/``mbpp``
    list every test that ran as Failure/Success. ``max_tests`` caps the failing bullets (``None``: all; the
    paper shows all). Call this only when the program did not pass (``result.passed`` is False); a passing
    result raises ValueError because the episode ends there.
    """
    _check_template(template)
    if len(result.tests) > len(tests):
        raise ValueError(f"result has {len(result.tests)} test outcomes for {len(tests)} tests")
    if result.error:
        return SANDBOX_ERROR_FEEDBACK
    if not result.compile_ok:
        return SYNTAX_ERROR_FEEDBACK.format(message=truncate(result.compile_message.rstrip("\n"), max_chars, keep="tail"))
    if result.passed:
        raise ValueError("render_feedback called for a passing result: the episode ends instead")
    pairs = list(zip(tests, result.tests))
    if template == "codecontests":
        failing = [(t, r) for t, r in pairs if r.status != "pass"]
        if max_tests is not None:
            failing = failing[:max_tests]
        if not failing:  # stopped early without a recorded failure: only a sandbox fault does that
            return SANDBOX_ERROR_FEEDBACK
        bullets = "\n".join(_codecontests_bullet(t, r, max_chars) for t, r in failing)
        return f"{CODECONTESTS_FEEDBACK_HEADER}\n\n{bullets}\n\n{RETRY}"
    bullets_list: list[str] = []
    failures = 0
    for t, r in pairs:
        if r.status == "pass":
            bullets_list.append(f"- Success: {_statement(t, max_chars)}")
            continue
        if max_tests is not None and failures >= max_tests:
            continue
        failures += 1
        bullets_list.append(_plus_failure_bullet(t, r, max_chars))
    if failures == 0:
        return SANDBOX_ERROR_FEEDBACK
    return f"{PLUS_FEEDBACK_HEADER}\n" + "\n".join(bullets_list) + f"\n\n{RETRY}"


def _codecontests_bullet(test: TestCase, res: TestResult, max_chars: int) -> str:
    head = f"- input `{truncate(test.input, max_chars)}` failed:"
    status = res.status
    if status == "wrong_answer":
        return (
            f"{head}\nExpected output `{truncate(test.output, max_chars)}` but got `{truncate(res.stdout, max_chars)}`"
        )
    if status == "runtime_error":
        return f"{head}\n{_stack_trace(res, max_chars)}"
    return f"{head} {_status_text(status)}"


def _status_text(status: str) -> str:
    texts = {
        "timeout": TIMEOUT_TEXT,
        "oom": OOM_TEXT,
        "output_limit": OUTPUT_LIMIT_TEXT,
        "sandbox_error": SANDBOX_ERROR_TEXT,
        # A per-test syntax_error cannot happen (compile runs first); render it as a sandbox fault if it does.
        "syntax_error": SANDBOX_ERROR_TEXT,
    }
    return texts[status]


def _stack_trace(res: TestResult, max_chars: int) -> str:
    trace = res.stderr.rstrip("\n")
    if not trace:
        trace = f"Process exited with code {res.exit_code}." if res.exit_code is not None else "Runtime error."
    return truncate(trace, max_chars, keep="tail")


def _statement(test: TestCase, max_chars: int) -> str:
    """A function-style test shown by its assert (the last statement; the ``candidate = f`` prologue is noise)."""
    return truncate(_assert_text(test.input), max_chars)


def _assert_text(test_input: str) -> str:
    """The last top-level statement of a function test (tests made by rlef.common.data start with
    ``candidate = <entry point>`` and the check's context; the last statement is the assert or loop)."""
    text = test_input.strip("\n")
    try:
        body = ast.parse(text).body
    except SyntaxError:
        return text
    if not body:
        return text
    return ast.get_source_segment(text, body[-1]) or text


def _plus_failure_bullet(test: TestCase, res: TestResult, max_chars: int) -> str:
    head = f"- Failure: {_statement(test, max_chars)}"
    if res.status == "runtime_error":
        last = _last_error_line(res.stderr)
        return head if last in ("AssertionError", "") else f"{head}\n{truncate(last, max_chars, keep='tail')}"
    if res.status == "wrong_answer":  # a function test that printed: show what it printed
        return f"{head}\nUnexpected output `{truncate(res.stdout, max_chars)}`"
    return f"{head}\n{_status_text(res.status)}"


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip("\n").split("\n") if ln.strip()]
    return lines[-1].strip() if lines else ""


# ---------------------------------------------------------------- code extraction

# A fence opens with ``` + an optional language tag + end of line, and closes at the next ```.
_FENCE = re.compile(r"```([^\s`]*)[ \t\r]*\n(.*?)```", re.DOTALL)
# Tags that count as Python (compared lower-cased). A bare fence (no tag) counts too: models often omit it.
PYTHON_TAGS = frozenset({"", "python", "python3", "py", "py3"})


def extract_code(response: str, which: Literal["last", "first"] = "last") -> str | None:
    """The program in ``response``: the last (or first) COMPLETE python code block, or None.

    What counts (the paper says only "the ```python block"; these are our rules):

    - a block opens with three backticks, an optional language tag and a line break, and closes at the
      next three backticks (which need not start a line: ``print(x)```` closes it);
    - the tag must be Python-like, case-insensitive: ``python``, ``python3``, ``py``, ``py3``, or no tag
      at all; blocks tagged otherwise (``cpp``, ``text``, ...) are skipped;
    - an unclosed block (truncated generation) does not count; neither does a block with only whitespace;
    - the one-line form ``` ```python print(1) ``` ``` (no line break after the tag) does not count.

    The code is returned with leading and trailing blank lines removed and one final newline.
    """
    blocks = []
    for match in _FENCE.finditer(response):
        tag, body = match.group(1).lower(), match.group(2)
        if tag not in PYTHON_TAGS or not body.strip():
            continue
        blocks.append(body)
    if not blocks:
        return None
    body = blocks[-1] if which == "last" else blocks[0]
    lines = body.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(line.rstrip("\r") for line in lines) + "\n"
