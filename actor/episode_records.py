"""What a finished episode leaves behind: its turns as they happened, the wire rollout, and its timings.

Token-exactness: a :class:`TurnRecord` stores the ids of its NEW prompt segment (``rlef.common.text.chat``) and
the SAMPLED response ids, so prompt_1 + response_1 + prompt_2 + ... is exactly the token sequence the engine
saw (:mod:`rlef.actor.episode` says how the segments are made). :func:`episode_record` packs them into the
wire :class:`~rlef.common.protocol.messages.Rollout` with the task rewards (:mod:`rlef.actor.rewards`) and counts the
finished episode (``rlef_actor_episodes_total`` and the reward and outcome metrics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rlef.actor.backends.base import Generation
from rlef.actor.rewards import episode_rewards
from rlef.common.config import RlefConfig
from rlef.common.protocol.messages import (
    ExecutionResult,
    FinalOutcome,
    Rollout,
    Turn,
    TurnOutcome,
    pack_floats,
    pack_ids,
)
from rlef.common.data.problems import Problem
from rlef.monitoring import metrics_actor as M


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
    scored: ExecutionResult | None = None
    """This turn's program on the final tests, when they ran in the turn's own job (public tests first, the
    rest gated on them: ExecutionJob.gate_tests); ``result`` is its public part."""


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
class EpisodeTimer:
    """Seconds one episode spent generating, waiting on the executor and making feedback."""

    generate_s: float = 0.0
    execute_s: float = 0.0
    feedback_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)


def episode_record(
    config: RlefConfig, actor_id: str, problem: Problem, rollout_id: str, turns: list[TurnRecord],
    final: FinalOutcome, final_result: ExecutionResult | None, timer: EpisodeTimer,
) -> EpisodeRecord:
    """The finished episode's record (rewards assigned, turns packed for the wire), counted in the metrics."""
    rewards = episode_rewards([t.code is not None for t in turns], final.passed, config.reward)
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
        rollout_id=rollout_id, actor_id=actor_id, problem_id=problem.problem_id, turns=wire_turns,
        final=final, rewards=rewards, timings=timings, random_feedback=config.actor.random_feedback,
    )
    M.EPISODES.inc()
    M.TURNS_PER_EPISODE.observe(len(turns))
    M.EPISODE_REWARD.observe(sum(rewards))
    M.EPISODE_REWARD_SUM.inc(sum(rewards))
    for turn, reward in enumerate(rewards, start=1):
        M.TURN_REWARD_SUM.labels(str(turn)).inc(reward)
    M.FINAL_OUTCOMES.labels(final.status).inc()
    return EpisodeRecord(rollout, problem, turns, final_result)
