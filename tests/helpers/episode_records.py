"""Real EpisodeRecords built from chosen turn texts and outcomes (no engine, no executor), for tests and the
tracking benchmark that need finished episodes of a known shape: fixed by feedback, same code twice, no code."""

from __future__ import annotations

from rlef.actor.backends.base import Generation
from rlef.actor.episode_records import EpisodeRecord, TurnRecord
from rlef.common.data.loaders import load_problems
from rlef.common.protocol.messages import FinalOutcome, Rollout, Turn, TurnOutcome, pack_floats, pack_ids
from rlef.common.text.prompts import extract_code, render_first_prompt

PROBLEM = load_problems("sample", split="train")[0]


def fenced(code: str) -> str:
    return f"Here is my program:\n```python\n{code}\n```"


def make_record(responses: list[str], statuses: list[str], final_passed: bool, *, rollout_id: str = "actor-0-n0-1",
                version: int = 0, feedback: str = "Your code failed the following tests:\n- input `1 2` expected `3` got `-1`") -> EpisodeRecord:
    """An episode whose turn k answered ``responses[k]`` and got ``statuses[k]`` on the public tests."""
    n_public = len(PROBLEM.public_tests)
    turns, wire = [], []
    prompt = render_first_prompt(PROBLEM, "codecontests")
    for k, (text, status) in enumerate(zip(responses, statuses)):
        ids = list(range(3, 3 + max(1, len(text) // 4)))
        gen = Generation(ids, [-0.5] * len(ids), "stop", version)
        code = extract_code(text, "last")
        outcome = TurnOutcome(status=status if code is not None else "no_code",
                              public_passed=n_public if status == "pass" else 0, public_total=n_public)
        last = k == len(responses) - 1
        turns.append(TurnRecord([1, 2, 3], gen, prompt, text, code, outcome, None, None if last else feedback))
        wire.append(Turn(prompt_ids=pack_ids([1, 2, 3]), response_ids=pack_ids(ids), logprobs=pack_floats(gen.logprobs),
                         policy_version=version, has_code=code is not None, outcome=outcome))
        prompt = feedback
    total = n_public + len(PROBLEM.private_tests)
    final_status = "pass" if final_passed else (turns[-1].outcome.status)
    final = FinalOutcome(passed=final_passed, status=final_status, tests_passed=total if final_passed else 0, tests_total=total)
    rewards = [0.0] * (len(turns) - 1) + [1.0 if final_passed else -1.0]
    rollout = Rollout(rollout_id=rollout_id, actor_id="actor-0", problem_id=PROBLEM.problem_id, turns=wire, final=final,
                      rewards=rewards, timings={"total_s": 1.5, "generate_s": 1.0, "execute_s": 0.4})
    return EpisodeRecord(rollout, PROBLEM, turns, None)


WRONG = fenced("a, b = map(int, input().split())\nprint(a - b)")
RIGHT = fenced("a, b = map(int, input().split())\nprint(a + b)")


def fixed_by_feedback(**kw) -> EpisodeRecord:
    return make_record([WRONG, RIGHT], ["wrong_answer", "pass"], True, **kw)


def ignored_feedback(**kw) -> EpisodeRecord:
    return make_record([WRONG, WRONG, WRONG], ["wrong_answer"] * 3, False, **kw)


def never_code(**kw) -> EpisodeRecord:
    return make_record(["I do not know.", "Still no idea.", "Sorry."], ["no_code"] * 3, False, **kw)


def solved_first(**kw) -> EpisodeRecord:
    return make_record([RIGHT], ["pass"], True, **kw)
