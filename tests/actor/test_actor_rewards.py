"""Task rewards of an episode against the method's rules, written out by hand."""

import pytest

from rlef.actor.rewards import episode_rewards
from rlef.common.config import RewardConfig


@pytest.mark.parametrize(
    "has_code, passed, stacks, expected",
    [
        ([True], True, True, [1.0]),
        ([True], False, True, [-1.0]),
        ([False, True], True, True, [-0.2, 1.0]),
        ([True, True, True], False, True, [0.0, 0.0, -1.0]),
        ([True, False, False], False, True, [0.0, -0.2, -1.2]),
        ([True, False, False], False, False, [0.0, -0.2, -1.0]),
        ([False], False, False, [-1.0]),
    ],
)
def test_episode_rewards(has_code, passed, stacks, expected):
    got = episode_rewards(has_code, passed, RewardConfig(no_code_penalty_stacks=stacks))
    assert got == pytest.approx(expected)


def test_custom_reward_values():
    cfg = RewardConfig(solved=2.0, unsolved=-3.0, no_code_penalty=-0.5)
    assert episode_rewards([False, True], False, cfg) == pytest.approx([-0.5, -3.0])


def test_invalid_episodes():
    with pytest.raises(ValueError):
        episode_rewards([], False, RewardConfig())
    with pytest.raises(ValueError):
        episode_rewards([True, False], True, RewardConfig())
