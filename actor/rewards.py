"""Task rewards of one episode (rlef-method.md, "Reward"); the KL term is added by the learner.

- final turn: ``reward.solved`` (+1) when the last program passes public + private tests, else
  ``reward.unsolved`` (-1);
- every turn whose response holds no valid code: ``reward.no_code_penalty`` (-0.2);
- a final turn without code gets ``unsolved + no_code_penalty`` when ``reward.no_code_penalty_stacks``
  (default; the paper is silent), else ``unsolved`` alone. Earlier turns carry only their no-code penalty.
"""

from __future__ import annotations

from typing import Sequence

from rlef.common.config import RewardConfig


def episode_rewards(has_code: Sequence[bool], final_passed: bool, reward: RewardConfig) -> list[float]:
    """r_t for each turn t of an episode whose turns held code as ``has_code`` says."""
    if not has_code:
        raise ValueError("an episode has at least one turn")
    if final_passed and not has_code[-1]:
        raise ValueError("a final turn without code cannot pass")
    rewards = [0.0 if code else reward.no_code_penalty for code in has_code]
    final = reward.solved if final_passed else reward.unsolved
    if has_code[-1] or reward.no_code_penalty_stacks:
        rewards[-1] += final
    else:
        rewards[-1] = final
    return rewards
