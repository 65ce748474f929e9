"""Synthetic but valid Rollout messages for tests of any role (shared helper, no test of its own here).

Importable from any test (pytest's ``pythonpath`` holds tests/):
``from helpers.rollouts import make_rollout``. Token ids are random within ``vocab_size``; behaviour
log-probs are random negatives; rewards follow the method's shape (final turn +1/-1, -0.2 without code).
"""

from __future__ import annotations

import random
import uuid

from rlef.common.protocol.messages import FinalOutcome, Rollout, Turn, TurnOutcome, pack_floats, pack_ids


def make_turn(rng: random.Random, vocab_size: int, prompt_len: int, response_len: int, version: int, has_code: bool = True,
              status: str = "wrong_answer") -> Turn:
    return Turn(
        prompt_ids=pack_ids([rng.randrange(vocab_size) for _ in range(prompt_len)]),
        response_ids=pack_ids([rng.randrange(vocab_size) for _ in range(response_len)]),
        logprobs=pack_floats([-rng.uniform(0.01, 6.0) for _ in range(response_len)]),
        policy_version=version,
        has_code=has_code,
        outcome=TurnOutcome(status=status if has_code else "no_code", public_passed=0, public_total=2),
    )


def make_rollout(vocab_size: int, *, seed: int | None = None, rollout_id: str | None = None, turns: int | None = None,
                 version: int = 0, max_prompt: int = 24, max_response: int = 16, actor_id: str = "test-actor",
                 solved: bool | None = None) -> Rollout:
    """One valid rollout of 1-3 turns (or ``turns``), every turn generated at policy ``version``."""
    rng = random.Random(seed)
    n_turns = turns if turns is not None else rng.randint(1, 3)
    solved = rng.random() < 0.3 if solved is None else solved
    built, rewards = [], []
    for t in range(n_turns):
        has_code = rng.random() < 0.85
        last = t == n_turns - 1
        status = "pass" if (last and solved) else "wrong_answer"
        built.append(make_turn(rng, vocab_size, rng.randint(2, max_prompt), rng.randint(1, max_response), version,
                               has_code, status))
        r = (-0.2 if not has_code else 0.0) + ((1.0 if solved else -1.0) if last else 0.0)
        rewards.append(r)
    return Rollout(
        rollout_id=rollout_id or f"r-{uuid.UUID(int=rng.getrandbits(128)).hex}",
        actor_id=actor_id,
        problem_id=f"p{rng.randrange(1000)}",
        turns=built,
        final=FinalOutcome(passed=solved, status="pass" if solved else "wrong_answer", tests_passed=int(solved),
                           tests_total=1),
        rewards=rewards,
        timings={"generate_s": rng.uniform(0.1, 1.0)},
    )


def make_rollouts(n: int, vocab_size: int, *, seed: int = 0, version: int = 0, prefix: str = "r", **kwargs) -> list[Rollout]:
    """``n`` rollouts with ids ``{prefix}-{seed}-{i}`` (deterministic for a seed)."""
    return [make_rollout(vocab_size, seed=seed * 100003 + i, rollout_id=f"{prefix}-{seed}-{i}", version=version, **kwargs)
            for i in range(n)]
