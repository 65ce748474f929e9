"""The in-memory problem every loader yields and every role consumes.

Two kinds of problem share one execution contract (one program, many stdin -> stdout tests):

- ``stdio`` (CodeContests, the bundled sample set): the program reads stdin and writes stdout; a test passes
  when the checker accepts its output.
- ``function`` (HumanEval, MBPP): tests are assert statements about a function. :meth:`Problem.program`
  appends a small harness that executes the statements it reads from stdin, so each assert becomes one test
  with the assert as input and an empty expected output; a failing assert is a runtime error whose
  traceback names the assert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlef.common.protocol.messages import TestCase

FUNCTION_HARNESS = "\n\n# --- rlef test harness: runs the test statement given on stdin ---\nimport sys as _rlef_sys\nexec(compile(_rlef_sys.stdin.read(), '<test>', 'exec'))\n"


@dataclass(frozen=True)
class Problem:
    problem_id: str
    dataset: Literal["codecontests", "humaneval", "sample", "humanevalplus", "mbppplus"]
    split: str
    description: str
    public_tests: list[TestCase]
    private_tests: list[TestCase]
    generated_tests: list[TestCase] = field(default_factory=list)
    kind: Literal["stdio", "function"] = "stdio"
    time_limit_s: float | None = None
    memory_limit_bytes: int | None = None
    solutions: list[str] = field(default_factory=list)
    incorrect_solutions: list[str] = field(default_factory=list)
    prefill: str = ""
    """Text the assistant response starts with (HumanEval's prompt is pre-filled at the start of the response)."""
    entry_point: str | None = None

    def program(self, code: str) -> str:
        """The program the executor runs for ``code`` (function problems get the stdin test harness)."""
        return code + FUNCTION_HARNESS if self.kind == "function" else code

    def tests(self, test_set: str) -> list[TestCase]:
        sets = {
            "public": self.public_tests,
            "private": self.private_tests,
            "generated": self.generated_tests,
            "public+private": self.public_tests + self.private_tests,
            "all": self.public_tests + self.private_tests + self.generated_tests,
        }
        return sets[test_set]
