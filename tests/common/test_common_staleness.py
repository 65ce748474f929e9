"""One staleness setting (staleness.max_async_level = k): the actor's gate and the learner's drop both derive
from it, checked on the real WeightSync gate and the real RolloutBuffer, built from the config the way
actor/main.py and learner/hub.py build them; the boundary case is an episode started at the actor's limit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers.rollouts import make_rollout
from rlef.actor.weights_sync import WeightSync
from rlef.common.config import RlefConfig, load_config
from rlef.common.errors import ConfigError
from rlef.common.protocol.messages import encode
from rlef.learner.buffer import RolloutBuffer

VOCAB = 1000


def actor_gate(config: RlefConfig, hub_version: int, actor_version: int) -> bool:
    """The real gate as actor/main.py builds it: may this actor start a new episode now?"""
    backend = SimpleNamespace(version=actor_version)
    return WeightSync(backend, receiver=None, max_policy_lag=config.staleness.actor_max_lag,
                      hub_version=lambda: hub_version).fresh()


def learner_keeps(config: RlefConfig, learner_version: int, episode_version: int, rid: str) -> bool:
    """The real buffer as learner/hub.py builds it: is a rollout generated at ``episode_version`` accepted?"""
    buf = RolloutBuffer(VOCAB, 4096, config.staleness.learner_max_lag)
    buf.version = learner_version
    return buf.offer(encode(make_rollout(VOCAB, seed=1, rollout_id=rid, version=episode_version)))


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_both_sides_derive_from_the_one_value(k: int) -> None:
    config = load_config(None, [f"staleness.max_async_level={k}"])
    assert config.staleness.learner_max_lag == k
    assert config.staleness.actor_max_lag == max(k - 1, 0)
    for hub in range(8):
        for actor in range(hub + 1):
            # The gate the actor applies is exactly the inequality StalenessConfig documents.
            assert actor_gate(config, hub, actor) == (hub - actor <= max(k - 1, 0))
            assert actor_gate(config, hub, actor) == config.staleness.actor_may_start(hub, actor)
    for version in range(8):
        for episode in range(version + 1):
            kept = learner_keeps(config, version, episode, f"r-{k}-{version}-{episode}")
            assert kept == (version - episode <= k) == config.staleness.learner_keeps(version, episode)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_an_episode_started_at_the_actors_limit_survives_one_more_publish(k: int) -> None:
    """The old bug: with equal actor and learner limits, such an episode was dropped at the hub's next publish."""
    config = load_config(None, [f"staleness.max_async_level={k}"])
    actor_version = 3
    hub = actor_version + config.staleness.actor_max_lag  # the actor's limit: it may still start
    assert actor_gate(config, hub, actor_version)
    assert not actor_gate(config, hub + 1, actor_version)  # one more and it may not
    assert learner_keeps(config, hub, actor_version, "same")         # trained before the next publish
    assert learner_keeps(config, hub + 1, actor_version, "next")     # or after it: still kept
    assert not learner_keeps(config, hub + 2, actor_version, "two")  # two publishes later: staler than k


def test_synchronous_means_lag_zero_on_both_sides() -> None:
    config = load_config(None, ["staleness.max_async_level=0"])
    assert actor_gate(config, 5, 5) and not actor_gate(config, 6, 5)
    assert learner_keeps(config, 5, 5, "a") and not learner_keeps(config, 6, 5, "b")


@pytest.mark.parametrize("section", ["actor", "learner"])
def test_the_old_per_role_keys_are_refused_naming_the_replacement(section: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: {"max_policy_lag": 2}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{section}.max_policy_lag was removed: set staleness.max_async_level" in str(err.value)
    assert str(path) in str(err.value)


def test_a_negative_level_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"staleness\.max_async_level: Input should be greater than or equal to 0"):
        load_config(None, ["staleness.max_async_level=-1"])
