"""The multi-turn RLEF episode runner: K episodes in flight on one asyncio loop.

One episode (rlef-method.md, "Episode"): render the turn-1 prompt with the chat template, generate, extract
the code (``prompt.code_block``: the last complete python block by default), run it on the PUBLIC tests,
stop as soon as they pass, otherwise render the feedback as the next user turn and try again, up to
``actor.max_turns``. The last turn's program is then scored on public + private tests and the task rewards
are assigned (:mod:`rlef.actor.rewards`).

Concurrency: ``run`` keeps ``actor.episodes_in_flight`` episodes going. While one waits on the executor,
others generate; the backend batches the generation requests that wait at the same time, so the engine
keeps working while programs run.

Token-exactness: a turn stores the ids of its NEW prompt segment (``rlef.common.text.chat``) and the SAMPLED
response ids, so prompt_1 + response_1 + prompt_2 + ... is exactly the token sequence the engine saw. A
response cut by the token budget (``finish_reason == "length"``) has no end-of-turn token: the next prompt
segment then starts with it, so the conversation stays well-formed (that token carries no log-prob and is
never trained on).

Context budget: an episode never exceeds ``model.max_seq_len`` tokens. A turn's response budget is
``min(max_new_tokens, max_seq_len - tokens so far)``; when nothing is left the episode ends with the turns it
has. A problem whose first prompt alone does not fit, or that has no public tests, is skipped and counted
(``rlef_actor_problems_skipped_total{reason}``); the runner goes on with the next problem.

Random-feedback ablation (``actor.random_feedback``, the paper's construction): the feedback text is that
of ANOTHER problem: one of its wrong solutions run on ITS OWN public tests, so inputs, expected and observed
outputs all belong to the other problem and say nothing about this one. Whether the episode stops is still
decided by the real program on the real public tests. The wrong solutions are the dataset's
``incorrect_solutions`` of other problems (or, when a dataset has none, a correct solution of a third
problem run on the other problem's tests). An earlier version ran the other problem's wrong program on THIS
problem's tests: that leaks this problem's inputs and expected outputs into the "random" feedback, which is
exactly the information the ablation must remove.

Executor failures never hang an episode and are never scored: a request that errors or outlives
``actor.execution_timeout_s`` becomes a ``sandbox_error`` result, which is resent up to
``actor.sandbox_retries`` times (backoff ``actor.sandbox_retry_backoff_s``, doubling); a refusal ("job refused
by the ...") is not resent, as it would be refused again. When no attempt succeeds the episode raises
:class:`~rlef.common.errors.InfrastructureError`: it is dropped and counted
(``rlef_actor_episodes_dropped_total{reason}``, ``EpisodeRunner.dropped``), never given a reward and never
shown "execution environment error" as feedback. ``rlef evaluate`` reports such problems as errored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

from rlef.actor.backends.base import Generation, GenerationBackend, Sampling
from rlef.actor.rewards import episode_rewards
from rlef.common.text import chat, prompts
from rlef.common.config import RlefConfig
from rlef.common.errors import ConfigError, InfrastructureError, RlefError
from rlef.common.protocol.execution_client import REFUSED
from rlef.common.protocol.messages import (
    ExecutionJob,
    ExecutionResult,
    FinalOutcome,
    Limits,
    Rollout,
    TestCase,
    Turn,
    TurnOutcome,
    pack_floats,
    pack_ids,
)
from rlef.common.data.problems import Problem
from rlef.monitoring import metrics_actor as M

log = logging.getLogger(__name__)

# An outer guard on top of the execution client's own timeout, so a stuck client cannot stall an episode.
_EXECUTION_GUARD_S = 10.0


class Executor(Protocol):
    async def run(self, job: ExecutionJob) -> ExecutionResult: ...


class RolloutSink(Protocol):
    async def send(self, record: "EpisodeRecord") -> None: ...


class Gate(Protocol):
    async def wait_fresh(self) -> None: ...


@dataclass
class TurnRecord:
    """One turn as it happened (the readable side of a rollout Turn)."""

    prompt_ids: list[int]
    generation: Generation
    prompt_text: str
    response_text: str
    code: str | None
    outcome: TurnOutcome
    result: ExecutionResult | None = None
    feedback: str | None = None
    """The next user message made from this turn's result (None on the last turn)."""


@dataclass
class EpisodeRecord:
    """A finished episode: the wire rollout plus the readable texts (for dry-run JSONL and tests)."""

    rollout: Rollout
    problem: Problem
    turns: list[TurnRecord]
    final_result: ExecutionResult | None

    def to_json(self, tokenizer: Any = None) -> dict[str, Any]:
        r = self.rollout
        return {
            "rollout_id": r.rollout_id,
            "actor_id": r.actor_id,
            "problem_id": r.problem_id,
            "random_feedback": r.random_feedback,
            "rewards": r.rewards,
            "final": r.final.to_builtins(),
            "timings": r.timings,
            "turns": [
                {
                    "policy_version": t.generation.policy_version,
                    "finish_reason": t.generation.finish_reason,
                    "has_code": t.code is not None,
                    "outcome": t.outcome.to_builtins(),
                    "prompt_text": t.prompt_text,
                    "response_text": t.response_text,
                    "code": t.code,
                    "feedback": t.feedback,
                    "prompt_ids": t.prompt_ids,
                    "response_ids": t.generation.token_ids,
                    "logprobs": [round(x, 6) for x in t.generation.logprobs],
                }
                for t in self.turns
            ],
        }


@dataclass
class _Timer:
    generate_s: float = 0.0
    execute_s: float = 0.0
    feedback_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)


async def _fresh_or_stopped(gate: Gate, stop: asyncio.Event) -> bool:
    """Wait at the gate unless ``stop`` comes first (True: fresh). An actor the hub refused or stopped never
    becomes fresh, and must not hang there."""
    fresh = asyncio.ensure_future(gate.wait_fresh())
    stopped = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait({fresh, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return fresh in done


def _passed_count(result: ExecutionResult) -> int:
    return sum(1 for t in result.tests if t.status == "pass")


def wrong_solution_pool(problems: Sequence[Problem]) -> list[tuple[Problem, str]]:
    """(problem, program wrong for it) pairs the random-feedback ablation draws from (module docstring)."""
    pool = [(p, code) for p in problems if p.public_tests for code in p.incorrect_solutions]
    if not pool:
        solved = [p for p in problems if p.solutions and p.public_tests]
        pool = [(p, solved[(i + 1) % len(solved)].solutions[0]) for i, p in enumerate(solved)] if len(solved) > 1 else []
    return pool


class EpisodeRunner:
    """Runs episodes of ``problems`` on ``backend`` with ``executor`` and hands each finished one to ``sink``."""

    def __init__(
        self,
        config: RlefConfig,
        *,
        backend: GenerationBackend,
        executor: Executor,
        tokenizer: Any,
        problems: Iterator[Problem],
        sink: RolloutSink,
        actor_id: str,
        instance: str,
        gate: Gate | None = None,
        feedback_problems: Sequence[Problem] = (),
        seed: int = 0,
        final_test_set: str = "public+private",
    ):
        self.config = config
        self.backend = backend
        self.executor = executor
        self.tokenizer = tokenizer
        self.problems = problems
        self.sink = sink
        self.actor_id = actor_id
        self.instance = instance
        self.gate = gate
        # Tests the last program is scored on: training uses public + private; `rlef evaluate` passes "all"
        # (CodeContests' generated tests too, as the paper's evaluation scores do).
        self.final_test_set = final_test_set
        self.eot = chat.end_of_turn_id(tokenizer)
        self.sampling = Sampling.from_config(config.actor.sampling, (self.eot,))
        self._rng = random.Random(seed)
        self._wrong_pool = wrong_solution_pool(feedback_problems) if config.actor.random_feedback else []
        if config.actor.random_feedback and len({p.problem_id for p, _ in self._wrong_pool}) < 2:
            raise ConfigError(
                "actor.random_feedback needs solutions of at least two problems (incorrect_solutions or solutions) "
                "to draw wrong programs from; the loaded dataset has fewer"
            )
        self._counter = 0
        self.started = 0
        self.finished = 0
        self.skipped: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        """(problem id, reason) of episodes dropped because an execution kept failing on our side."""
        self._t0 = time.perf_counter()
        self._busy0 = backend.busy_seconds()
        self._busy_reported = self._busy0

    # ------------------------------------------------------------------ the loop

    async def run(self, episodes: int | None = None, stop: asyncio.Event | None = None) -> None:
        """Keep ``actor.episodes_in_flight`` episodes going until ``episodes`` were started (None: forever)
        or ``stop`` is set; returns when every started episode has been handed to the sink."""
        stop = stop or asyncio.Event()
        self._t0 = time.perf_counter()
        self._busy0 = self.backend.busy_seconds()
        workers = [asyncio.create_task(self._worker(episodes, stop), name=f"episode-slot-{k}")
                   for k in range(self.config.actor.episodes_in_flight)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, limit: int | None, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if limit is not None and self.started >= limit:
                return
            self.started += 1
            if self.gate is not None and not await _fresh_or_stopped(self.gate, stop):
                self.started -= 1
                return
            problem = next(self.problems)
            rollout_id = self.next_rollout_id()
            M.EPISODES_IN_FLIGHT.inc()
            try:
                record = await self.run_episode(problem, rollout_id)
            except asyncio.CancelledError:
                raise
            except InfrastructureError as exc:
                M.EPISODES_DROPPED.labels(exc.reason).inc()
                self.dropped.append((problem.problem_id, exc.reason))
                log.warning("episode %s on problem %s dropped (not scored): %s", rollout_id, problem.problem_id, exc)
                await asyncio.sleep(0)
                continue
            except Exception as exc:  # noqa: BLE001 - the loop counts, logs and goes on (see module docstring)
                M.EPISODE_ERRORS.labels(type(exc).__name__).inc()
                self.errors.append(f"{problem.problem_id}: {type(exc).__name__}: {exc}")
                log.exception("episode %s on problem %s failed; continuing", rollout_id, problem.problem_id)
                await asyncio.sleep(0)
                continue
            finally:
                M.EPISODES_IN_FLIGHT.dec()
            if record is None:
                await asyncio.sleep(0)
                continue
            waited = time.perf_counter()
            await self.sink.send(record)
            M.ROLLOUT_SEND_WAIT.observe(time.perf_counter() - waited)
            M.ROLLOUTS_SENT.inc()
            self.finished += 1
            self._report_busy()

    def next_rollout_id(self) -> str:
        """``<actor id>-<instance nonce>-<counter>``: unique across restarts because the nonce is fresh per start."""
        self._counter += 1
        return f"{self.actor_id}-{self.instance}-{self._counter}"

    def busy_fraction(self) -> float:
        """Engine busy time over wall time since ``run`` started."""
        wall = time.perf_counter() - self._t0
        return (self.backend.busy_seconds() - self._busy0) / wall if wall > 0 else 0.0

    def _report_busy(self) -> None:
        busy = self.backend.busy_seconds()
        M.ENGINE_BUSY_SECONDS.inc(max(0.0, busy - self._busy_reported))
        self._busy_reported = busy
        M.ENGINE_BUSY_FRACTION.set(self.busy_fraction())

    # ------------------------------------------------------------------ one episode

    def _skip(self, problem: Problem, reason: str) -> None:
        M.PROBLEMS_SKIPPED.labels(reason).inc()
        self.skipped.append((problem.problem_id, reason))
        log.warning("skipping problem %s: %s", problem.problem_id, reason)

    async def run_episode(self, problem: Problem, rollout_id: str) -> EpisodeRecord | None:
        """Run one episode; None (counted, logged) when the problem cannot be run."""
        cfg = self.config
        if not problem.public_tests:
            self._skip(problem, "no_public_tests")
            return None
        timer = _Timer()
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
        return self._record(problem, rollout_id, turns, final, final_result, timer)

    async def _turn(
        self, problem: Problem, rollout_id: str, t: int, context: list[int], prompt_ids: list[int], prompt_text: str,
        budget: int, timer: _Timer,
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
        if code is None:
            outcome = TurnOutcome(status="no_code", public_passed=0, public_total=n_public)
        else:
            result = await self._execute(problem, code, problem.public_tests, f"{rollout_id}-t{t + 1}", timer)
            outcome = TurnOutcome(status=result.status, public_passed=_passed_count(result), public_total=n_public)
        M.TURN_OUTCOMES.labels(str(t + 1), outcome.status).inc()
        return TurnRecord(list(prompt_ids), gen, prompt_text, response_text, code, outcome, result)

    async def _execute(self, problem: Problem, code: str, tests: list[TestCase], job_id: str, timer: _Timer) -> ExecutionResult:
        """Run ``code`` on ``tests``: a result the program earned, or InfrastructureError (module docstring).

        A resend gets a fresh job id (``<job_id>-a<n>``) so a late answer of an abandoned attempt is dropped by
        the client instead of being taken for the new one's."""
        cfg = self.config
        limits = Limits(
            time_s=problem.time_limit_s or cfg.executor.default_time_limit_s,
            memory_bytes=problem.memory_limit_bytes or cfg.executor.default_memory_limit_bytes,
        )
        attempts = cfg.actor.sandbox_retries + 1
        for attempt in range(attempts):
            attempt_id = job_id if attempt == 0 else f"{job_id}-a{attempt}"
            result = await self._execute_once(ExecutionJob(
                job_id=attempt_id, code=problem.program(code), tests=list(tests), limits=limits), timer)
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

    async def _execute_once(self, job: ExecutionJob, timer: _Timer) -> ExecutionResult:
        """One attempt; any failure to get an answer becomes a sandbox_error result."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.executor.run(job), self.config.actor.execution_timeout_s + _EXECUTION_GUARD_S)
        except (RlefError, asyncio.TimeoutError) as exc:
            log.warning("execution %s failed: %s: %s", job.job_id, type(exc).__name__, exc)
            result = ExecutionResult(
                job_id=job.job_id, compile_ok=True, tests_total=len(job.tests or []), error=f"{type(exc).__name__}: {exc}"[:1000]
            )
        elapsed = time.perf_counter() - started
        timer.execute_s += elapsed
        M.EXECUTION_WAIT.observe(elapsed)
        return result

    async def _feedback(self, problem: Problem, rollout_id: str, t: int, turn: TurnRecord) -> str:
        cfg = self.config.prompt
        if turn.code is None or turn.result is None:
            return prompts.render_no_code_feedback(cfg.template)
        if self.config.actor.random_feedback:
            text = await self._random_feedback(problem, rollout_id, t)
            if text is not None:
                return text
        return prompts.render_feedback(
            problem, problem.public_tests, turn.result,
            max_chars=cfg.feedback_max_chars, max_tests=cfg.max_feedback_tests, template=cfg.template,
        )

    async def _random_feedback(self, problem: Problem, rollout_id: str, t: int) -> str | None:
        """Feedback of another problem: a wrong program of it run on its own public tests (None: every draw
        happened to pass them; the real feedback is used then, and that is logged)."""
        cfg = self.config.prompt
        candidates = [(other, code) for other, code in self._wrong_pool if other.problem_id != problem.problem_id]
        for attempt in range(3):
            other, code = self._rng.choice(candidates)
            result = await self._execute(other, code, other.public_tests, f"{rollout_id}-t{t + 1}-rf{attempt}", _Timer())
            if not result.passed:
                return prompts.render_feedback(
                    other, other.public_tests, result,
                    max_chars=cfg.feedback_max_chars, max_tests=cfg.max_feedback_tests, template=cfg.template,
                )
        log.warning("random feedback for %s: three wrong programs passed their public tests; using real feedback", problem.problem_id)
        return None

    async def _final(
        self, problem: Problem, rollout_id: str, last: TurnRecord, timer: _Timer
    ) -> tuple[FinalOutcome, ExecutionResult | None]:
        tests = problem.tests(self.final_test_set)
        if last.code is None:
            return FinalOutcome(passed=False, status="no_code", tests_passed=0, tests_total=len(tests)), None
        if len(tests) == len(problem.public_tests) and last.result is not None:  # nothing beyond the public tests
            result = last.result
        else:
            result = await self._execute(problem, last.code, tests, f"{rollout_id}-final", timer)
        final = FinalOutcome(passed=result.passed, status=result.status, tests_passed=_passed_count(result), tests_total=len(tests))
        return final, result

    def _record(
        self, problem: Problem, rollout_id: str, turns: list[TurnRecord], final: FinalOutcome,
        final_result: ExecutionResult | None, timer: _Timer,
    ) -> EpisodeRecord:
        rewards = episode_rewards([t.code is not None for t in turns], final.passed, self.config.reward)
        wire_turns = [
            Turn(
                prompt_ids=pack_ids(t.prompt_ids),
                response_ids=pack_ids(t.generation.token_ids),
                logprobs=pack_floats(t.generation.logprobs),
                policy_version=t.generation.policy_version,
                has_code=t.code is not None,
                outcome=t.outcome,
            )
            for t in turns
        ]
        timings = {
            "generate_s": timer.generate_s,
            "execute_s": timer.execute_s,
            "feedback_s": timer.feedback_s,
            "total_s": time.perf_counter() - timer.start,
            "finished_unix": time.time(),
        }
        rollout = Rollout(
            rollout_id=rollout_id, actor_id=self.actor_id, problem_id=problem.problem_id, turns=wire_turns,
            final=final, rewards=rewards, timings=timings, random_feedback=self.config.actor.random_feedback,
        )
        M.EPISODES.inc()
        M.TURNS_PER_EPISODE.observe(len(turns))
        M.EPISODE_REWARD.observe(sum(rewards))
        M.EPISODE_REWARD_SUM.inc(sum(rewards))
        for turn, reward in enumerate(rewards, start=1):
            M.TURN_REWARD_SUM.labels(str(turn)).inc(reward)
        M.FINAL_OUTCOMES.labels(final.status).inc()
        return EpisodeRecord(rollout, problem, turns, final_result)
