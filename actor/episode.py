"""One multi-turn RLEF episode (rlef-method.md, "Episode").

Render the turn-1 prompt with the chat template, generate, extract the code (``prompt.code_block``: the last
complete python block by default), run it on the PUBLIC tests, stop as soon as they pass, otherwise render
the feedback as the next user turn and try again, up to ``actor.max_turns``. The last turn's program is then
scored on public + private tests and the task rewards are assigned (:func:`rlef.actor.episode_records.episode_record`).

One job per turn: a turn's job carries the final tests too, gated on the public ones
(``ExecutionJob.gate_tests``): the private tests run only when the public ones pass (the episode ends there) or
at the last turn, and that run is the final score. Feedback and the turn's outcome see the public part only,
so the model is shown exactly what a public-only run shows; what it saves is the separate scoring job (a
jail start, about a third of the executor's work per episode).
With ``actor.random_feedback`` the feedback text comes from :mod:`rlef.actor.random_feedback`.

Token-exactness: each turn's prompt ids are its NEW segment (:class:`~rlef.actor.episode_records.TurnRecord`).
A response cut by the token budget (``finish_reason == "length"``) has no end-of-turn token: the next prompt
segment then starts with it, so the conversation stays well-formed (that token carries no log-prob and is
never trained on).

Context budget: an episode never exceeds ``model.max_seq_len`` tokens. A turn's response budget is
``min(max_new_tokens, max_seq_len - tokens so far)``; when nothing is left the episode ends with the turns it
has. A problem whose first prompt alone does not fit, or that has no public tests, is skipped and counted
(``rlef_actor_problems_skipped_total{reason}``, ``skipped``): no episode is run for it.

Executor failures never hang an episode and are never scored: a request that errors or outlives
``actor.execution_timeout_s`` becomes a ``sandbox_error`` result, which is resent up to
``actor.sandbox_retries`` times (backoff ``actor.sandbox_retry_backoff_s``, doubling); a refusal ("job refused
by the ...") is not resent, as it would be refused again. When no attempt succeeds the episode raises
:class:`~rlef.common.errors.InfrastructureError`: the slot scheduler (:mod:`rlef.actor.episodes`) drops and
counts it, it is never given a reward and never shown "execution environment error" as feedback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol, Sequence

from rlef.actor.backends.base import GenerationBackend, Sampling
from rlef.actor.episode_records import EpisodeRecord, EpisodeTimer, TurnRecord, episode_record
from rlef.actor.random_feedback import RandomFeedback
from rlef.common.text import chat, prompts
from rlef.common.config import RlefConfig
from rlef.common.errors import InfrastructureError, RlefError
from rlef.common.protocol.execution_client import REFUSED, failed_result, limits_for
from rlef.common.protocol.messages import (
    ExecutionJob,
    ExecutionResult,
    FinalOutcome,
    TestCase,
    TurnOutcome,
)
from rlef.common.data.problems import Problem
from rlef.monitoring import metrics_actor as M

log = logging.getLogger(__name__)

# An outer guard on top of the execution client's own timeout, so a stuck client cannot stall an episode.
_EXECUTION_GUARD_S = 10.0


class Executor(Protocol):
    async def run(self, job: ExecutionJob) -> ExecutionResult: ...


def public_part(result: ExecutionResult, n_public: int) -> ExecutionResult:
    """The run of a gated job (public tests first) as a run on the public tests alone would have reported it."""
    return ExecutionResult(
        job_id=result.job_id, worker_id=result.worker_id, compile_ok=result.compile_ok,
        compile_message=result.compile_message, tests=result.tests[:n_public], tests_total=n_public,
        error=result.error, attempts=result.attempts, seconds=result.seconds,
    )


def _passed_count(result: ExecutionResult) -> int:
    return sum(1 for t in result.tests if t.status == "pass")


def skip_reason(problem: Problem) -> str | None:
    """Why no episode is run for ``problem`` at all (None: it can be run). Without public tests there is no
    feedback to give and no test to stop on. The training stream drops such problems up front
    (:mod:`rlef.actor.problem_stream`); the player checks again for problems handed to it directly."""
    return None if problem.public_tests else "no_public_tests"


def count_skip(problem: Problem, reason: str) -> None:
    """Count and log a problem no episode is run for (``rlef_actor_problems_skipped_total{reason}``)."""
    M.PROBLEMS_SKIPPED.labels(reason).inc()
    log.warning("skipping problem %s: %s", problem.problem_id, reason)


class EpisodePlayer:
    """Plays one episode of a problem at a time (many concurrently on one loop): turns, feedback, final score."""

    def __init__(
        self, config: RlefConfig, *, backend: GenerationBackend, executor: Executor, tokenizer: Any, actor_id: str,
        feedback_problems: Sequence[Problem] = (), seed: int = 0, final_test_set: str = "public+private",
    ):
        self.config = config
        self.backend = backend
        self.executor = executor
        self.tokenizer = tokenizer
        self.actor_id = actor_id
        # Tests the last program is scored on: training uses public + private; `rlef evaluate` passes "all"
        # (CodeContests' generated tests too, as the paper's evaluation scores do).
        self.final_test_set = final_test_set
        self.eot = chat.end_of_turn_id(tokenizer)
        self.sampling = Sampling.from_config(config.actor.sampling, (self.eot,))
        self.random_feedback = RandomFeedback(feedback_problems, seed) if config.actor.random_feedback else None
        self.skipped: list[tuple[str, str]] = []
        """(problem id, reason) of problems no episode could be run for."""

    def _skip(self, problem: Problem, reason: str) -> None:
        count_skip(problem, reason)
        self.skipped.append((problem.problem_id, reason))

    async def run_episode(self, problem: Problem, rollout_id: str) -> EpisodeRecord | None:
        """Run one episode; None (counted, logged) when the problem cannot be run."""
        cfg = self.config
        reason = skip_reason(problem)
        if reason is not None:
            self._skip(problem, reason)
            return None
        timer = EpisodeTimer()
        first_text = prompts.render_first_prompt(problem, cfg.prompt.template)
        prompt_ids = chat.first_prompt_ids(self.tokenizer, first_text, problem.prefill)
        prompt_text = first_text
        context: list[int] = []  # every token of the episode so far (what the engine conditions on)
        turns: list[TurnRecord] = []
        for t in range(cfg.actor.max_turns):
            budget = cfg.model.max_seq_len - len(context) - len(prompt_ids)
            if budget < 1:
                if not turns:
                    self._skip(problem, "prompt_too_long")
                    return None
                turns[-1].feedback = None  # that feedback was never shown: the previous turn is the last
                break
            context += prompt_ids
            turn = await self._turn(problem, rollout_id, t, context, prompt_ids, prompt_text, budget, timer)
            turns.append(turn)
            context += turn.generation.token_ids
            if (turn.result is not None and turn.result.passed) or t == cfg.actor.max_turns - 1:
                break
            started = time.perf_counter()
            turn.feedback = await self._feedback(problem, rollout_id, t, turn)
            timer.feedback_s += time.perf_counter() - started
            prompt_text = turn.feedback
            prompt_ids = chat.next_prompt_ids(self.tokenizer, turn.feedback)
            if turn.generation.finish_reason != "stop":
                prompt_ids = [self.eot] + prompt_ids
        final, final_result = await self._final(problem, rollout_id, turns[-1], timer)
        return episode_record(cfg, self.actor_id, problem, rollout_id, turns, final, final_result, timer)

    async def _turn(
        self, problem: Problem, rollout_id: str, t: int, context: list[int], prompt_ids: list[int], prompt_text: str,
        budget: int, timer: EpisodeTimer,
    ) -> TurnRecord:
        started = time.perf_counter()
        gen = await self.backend.generate(list(context), self.sampling.with_budget(min(self.sampling.max_new_tokens, budget)))
        elapsed = time.perf_counter() - started
        timer.generate_s += elapsed
        M.GENERATION_SECONDS.observe(elapsed)
        M.GENERATED_TOKENS.inc(len(gen.token_ids))
        M.PROMPT_TOKENS.inc(len(prompt_ids))
        response_text = self.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
        # HumanEval pre-fills the response: the program is prefill + what the model wrote after it.
        searched = problem.prefill + response_text if t == 0 else response_text
        code = prompts.extract_code(searched, self.config.prompt.code_block)
        n_public = len(problem.public_tests)
        result = None
        scored = None
        if code is None:
            outcome = TurnOutcome(status="no_code", public_passed=0, public_total=n_public)
        else:
            final_tests = problem.tests(self.final_test_set)
            if len(final_tests) > n_public:  # public tests first (Problem.tests), the rest gated on them
                last = t == self.config.actor.max_turns - 1
                scored = await self._execute(problem, code, final_tests, f"{rollout_id}-t{t + 1}", timer,
                                             gate_tests=0 if last else n_public)
                result = public_part(scored, n_public)
            else:
                result = await self._execute(problem, code, problem.public_tests, f"{rollout_id}-t{t + 1}", timer)
            outcome = TurnOutcome(status=result.status, public_passed=_passed_count(result), public_total=n_public)
        M.TURN_OUTCOMES.labels(str(t + 1), outcome.status).inc()
        return TurnRecord(list(prompt_ids), gen, prompt_text, response_text, code, outcome, result, scored=scored)

    async def _execute(
        self, problem: Problem, code: str, tests: list[TestCase], job_id: str, timer: EpisodeTimer, gate_tests: int = 0
    ) -> ExecutionResult:
        """Run ``code`` on ``tests``: a result the program earned, or InfrastructureError (module docstring).

        A resend gets a fresh job id (``<job_id>-a<n>``) so a late answer of an abandoned attempt is dropped by
        the client instead of being taken for the new one's."""
        cfg = self.config
        limits = limits_for(problem, cfg.executor)
        attempts = cfg.actor.sandbox_retries + 1
        for attempt in range(attempts):
            attempt_id = job_id if attempt == 0 else f"{job_id}-a{attempt}"
            result = await self._execute_once(ExecutionJob(
                job_id=attempt_id, code=problem.program(code), tests=list(tests), limits=limits, gate_tests=gate_tests), timer)
            if result.status != "sandbox_error":
                return result
            if result.error.startswith(REFUSED):
                raise InfrastructureError("refused", job_id=attempt_id, error=result.error, attempts=attempt + 1)
            if attempt + 1 < attempts:
                M.SANDBOX_RETRIES.inc()
                delay = cfg.actor.sandbox_retry_backoff_s * 2 ** attempt
                log.warning("execution %s: sandbox_error (%s); resending in %.1f s", attempt_id, result.error[:200], delay)
                await asyncio.sleep(delay)
        raise InfrastructureError("sandbox_error", job_id=attempt_id, error=result.error or "incomplete result", attempts=attempts)

    async def _execute_once(self, job: ExecutionJob, timer: EpisodeTimer) -> ExecutionResult:
        """One attempt; any failure to get an answer becomes a sandbox_error result."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.executor.run(job), self.config.actor.execution_timeout_s + _EXECUTION_GUARD_S)
        except (RlefError, asyncio.TimeoutError) as exc:
            log.warning("execution %s failed: %s: %s", job.job_id, type(exc).__name__, exc)
            result = failed_result(job.job_id, f"{type(exc).__name__}: {exc}"[:1000], tests_total=len(job.tests or []))
        elapsed = time.perf_counter() - started
        timer.execute_s += elapsed
        M.EXECUTION_WAIT.observe(elapsed)
        return result

    async def _feedback(self, problem: Problem, rollout_id: str, t: int, turn: TurnRecord) -> str:
        cfg = self.config.prompt
        if turn.code is None or turn.result is None:
            return prompts.render_no_code_feedback(cfg.template)
        if self.random_feedback is not None:
            # Its own timer: the ablation's executions are not this episode's (timings keep only the real ones).
            timer = EpisodeTimer()
            text = await self.random_feedback.text(
                problem, f"{rollout_id}-t{t + 1}", lambda p, code, tests, job_id: self._execute(p, code, tests, job_id, timer), cfg)
            if text is not None:
                return text
        return prompts.render_feedback(
            problem, problem.public_tests, turn.result,
            max_chars=cfg.feedback_max_chars, max_tests=cfg.max_feedback_tests, template=cfg.template,
        )

    async def _final(
        self, problem: Problem, rollout_id: str, last: TurnRecord, timer: EpisodeTimer
    ) -> tuple[FinalOutcome, ExecutionResult | None]:
        tests = problem.tests(self.final_test_set)
        if last.code is None:
            return FinalOutcome(passed=False, status="no_code", tests_passed=0, tests_total=len(tests)), None
        if len(tests) == len(problem.public_tests) and last.result is not None:  # nothing beyond the public tests
            result = last.result
        elif last.scored is not None and len(last.scored.tests) == len(tests) == last.scored.tests_total:
            result = last.scored  # the turn's own job ran every final test
        elif last.scored is not None and not last.scored.compile_ok:
            result = last.scored  # does not compile: it fails every test alike
        else:
            result = await self._execute(problem, last.code, tests, f"{rollout_id}-final", timer)
        final = FinalOutcome(passed=result.passed, status=result.status, tests_passed=_passed_count(result), tests_total=len(tests))
        return final, result
