"""The random-feedback ablation (``actor.random_feedback``, the paper's construction).

The feedback text is that of ANOTHER problem: one of its wrong solutions run on ITS OWN public tests, so
inputs, expected and observed outputs all belong to the other problem and say nothing about this one.
Whether the episode stops is still decided by the real program on the real public tests
(:mod:`rlef.actor.episode`). The wrong solutions are the dataset's ``incorrect_solutions`` of other problems
(or, when a dataset has none, a correct solution of a third problem run on the other problem's tests). An
earlier version ran the other problem's wrong program on THIS problem's tests: that leaks this problem's
inputs and expected outputs into the "random" feedback, which is exactly the information the ablation must
remove.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from rlef.common.text import prompts
from rlef.common.config import PromptConfig
from rlef.common.errors import ConfigError
from rlef.common.protocol.messages import ExecutionResult, TestCase
from rlef.common.data.problems import Problem

log = logging.getLogger(__name__)

#: Runs a program on tests for the episode: (problem, code, tests, job id) -> the result it earned.
Execute = Callable[[Problem, str, list[TestCase], str], Awaitable[ExecutionResult]]

# Draws of a wrong program per feedback before the real feedback is used instead.
DRAWS = 3


def wrong_solution_pool(problems: Sequence[Problem]) -> list[tuple[Problem, str]]:
    """(problem, program wrong for it) pairs the random-feedback ablation draws from (module docstring)."""
    pool = [(p, code) for p in problems if p.public_tests for code in p.incorrect_solutions]
    if not pool:
        solved = [p for p in problems if p.solutions and p.public_tests]
        pool = [(p, solved[(i + 1) % len(solved)].solutions[0]) for i, p in enumerate(solved)] if len(solved) > 1 else []
    return pool


class RandomFeedback:
    """Draws another problem's wrong program and renders its feedback on that problem's own public tests."""

    def __init__(self, feedback_problems: Sequence[Problem], seed: int = 0):
        self._rng = random.Random(seed)
        self._pool = wrong_solution_pool(feedback_problems)
        if len({p.problem_id for p, _ in self._pool}) < 2:
            raise ConfigError(
                "actor.random_feedback needs solutions of at least two problems (incorrect_solutions or solutions) "
                "to draw wrong programs from; the loaded dataset has fewer"
            )

    async def text(self, problem: Problem, job_id: str, execute: Execute, cfg: PromptConfig) -> str | None:
        """Feedback of another problem: a wrong program of it run on its own public tests (None: every draw
        happened to pass them; the real feedback is used then, and that is logged). ``job_id`` names the
        turn; each draw's job is ``<job_id>-rf<n>``."""
        candidates = [(other, code) for other, code in self._pool if other.problem_id != problem.problem_id]
        for attempt in range(DRAWS):
            other, code = self._rng.choice(candidates)
            result = await execute(other, code, other.public_tests, f"{job_id}-rf{attempt}")
            if not result.passed:
                return prompts.render_feedback(
                    other, other.public_tests, result,
                    max_chars=cfg.feedback_max_chars, max_tests=cfg.max_feedback_tests, template=cfg.template,
                )
        log.warning("random feedback for %s: three wrong programs passed their public tests; using real feedback", problem.problem_id)
        return None
