"""The actor's endless, seeded stream of problems from its shard of the dataset.

Actor ``i`` of ``n`` (``deploy.actors``) takes problems ``i, i+n, i+2n, ...`` of the loaded split, so actors
never duplicate each other's problems within an epoch; each epoch is a fresh shuffle of the shard drawn from
``Random(seed, i, epoch)``, so a restarted actor replays the same order (rollout ids stay unique through
the per-start nonce, not the order). Problems no episode can be run for
(:func:`rlef.actor.episode.skip_reason`: no public tests, so no feedback) are dropped here and counted
(``rlef_actor_problems_skipped_total{reason="no_public_tests"}``).
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from rlef.actor.episode import count_skip, skip_reason
from rlef.common.errors import DataError
from rlef.common.data.problems import Problem


def shard(problems: Sequence[Problem], index: int, count: int) -> list[Problem]:
    """Actor ``index``'s share (round-robin) of ``problems``."""
    if not 0 <= index < count:
        raise ValueError(f"actor index {index} outside 0..{count - 1} (deploy.actors = {count})")
    return list(problems[index::count])


def problem_stream(problems: Sequence[Problem], index: int, count: int, seed: int) -> Iterator[Problem]:
    """Endless seeded epochs over this actor's shard (see the module docstring)."""
    mine = shard(problems, index, count)
    usable = []
    for p in mine:
        reason = skip_reason(p)
        if reason is None:
            usable.append(p)
        else:
            count_skip(p, reason)
    if not usable:
        raise DataError(f"actor {index} of {count}: no problem with public tests in its shard of {len(problems)} problems")
    epoch = 0
    while True:
        order = list(usable)
        random.Random(f"{seed}-{index}-{epoch}").shuffle(order)
        yield from order
        epoch += 1
