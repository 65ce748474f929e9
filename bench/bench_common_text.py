"""Per-turn text costs on the actor's path: segment ids, code extraction, feedback rendering.

Each figure is printed next to a baseline measured in the same run on the same input:
- next_prompt_ids (renders the chat template twice and encodes the cut) vs. encoding the same segment text;
- first_prompt_ids vs. encoding the same text;
- extract_code on a 3-block response vs. one ``str.find`` scan of it;
- render_feedback (5 failing tests, truncation) vs. ``str.format`` of a text of the same size.

Run: ``.venv/bin/python bench/bench_common_text.py``.
"""

from __future__ import annotations

import time

from rlef.common.text import chat, prompts
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.messages import ExecutionResult, TestResult
from rlef.common.models.tiny_model import build_tokenizer, training_corpus


def best_per_call(fn, n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def row(name: str, t: float, base_name: str, base: float) -> None:
    print(f"{name:<44} {t * 1e6:9.1f} us   {t / base:6.1f}x {base_name} ({base * 1e6:.1f} us)")


def main() -> None:
    tok = build_tokenizer(training_corpus())
    problem = load_problems("sample", split="train")[0]
    user = prompts.render_first_prompt(problem, "codecontests")
    tests = (problem.public_tests + problem.private_tests)[:4]
    result = ExecutionResult(
        job_id="b", compile_ok=True, tests_total=len(tests),
        tests=[TestResult(status="wrong_answer", stdout="x" * 600)] + [TestResult(status="runtime_error", stderr="Traceback\n" * 80)] * (len(tests) - 1),
    )
    feedback = prompts.render_feedback(problem, tests, result, max_chars=512, max_tests=None, template="codecontests")
    response = "Let me think.\n```python\nx = 1\n```\nBetter:\n```python\n" + "print(1)\n" * 30 + "```\nAnd in C:\n```c\nint main(){}\n```\n"

    seg_text = chat.next_prompt_text(tok, feedback)
    row("next_prompt_ids (feedback turn)", best_per_call(lambda: chat.next_prompt_ids(tok, feedback), 300),
        "encode", best_per_call(lambda: chat.encode(tok, seg_text), 300))
    first_text = chat.first_prompt_text(tok, user)
    row("first_prompt_ids", best_per_call(lambda: chat.first_prompt_ids(tok, user), 300),
        "encode", best_per_call(lambda: chat.encode(tok, first_text), 300))
    row("extract_code (3 blocks)", best_per_call(lambda: prompts.extract_code(response), 3000),
        "str.find scan", best_per_call(lambda: response.find("```c"), 3000))
    template = "{a}{b}{c}"
    third = len(feedback) // 3
    row("render_feedback (4 tests, truncation)",
        best_per_call(lambda: prompts.render_feedback(problem, tests, result, max_chars=512, max_tests=None, template="codecontests"), 3000),
        "str.format", best_per_call(lambda: template.format(a=feedback[:third], b=feedback[third:2 * third], c=feedback[2 * third:]), 3000))


if __name__ == "__main__":
    main()
