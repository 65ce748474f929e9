"""The actor's endless, seeded stream of problems from its shard of the dataset.

Actor ``i`` of ``n`` (``deploy.actors``) takes problems ``i, i+n, i+2n, ...`` of the loaded split, so actors
never duplicate each other's problems within an epoch; each epoch is a fresh shuffle of the shard drawn from
``Random(seed, i, epoch)``, so a restarted actor replays the same order (rollout ids stay unique through
the per-start nonce, not the order). Problems without public tests cannot give feedback: they are dropped
here and counted (``rlef_actor_problems_skipped_total{reason="no_public_tests"}``).
"""

from __future__ import annotations

import logging
import random
from typing import Iterator, Sequence

from rlef.common.errors import DataError
from rlef.common.data.problems import Problem
from rlef.monitoring import metrics_actor as M

log = logging.getLogger(__name__)


def shard(problems: Sequence[Problem], index: int, count: int) -> list[Problem]:
    """Actor ``index``'s share (round-robin) of ``problems``."""
    if not 0 <= index < count:
        raise ValueError(f"actor index {index} outside 0..{count - 1} (deploy.actors = {count})")
    return list(problems[index::count])


def problem_stream(problems: Sequence[Problem], index: int, count: int, seed: int) -> Iterator[Problem]:
    """Endless seeded epochs over this actor's shard (see the module docstring)."""
    mine = shard(problems, index, count)
    usable = [p for p in mine if p.public_tests]
    for p in mine:
        if not p.public_tests:
            M.PROBLEMS_SKIPPED.labels("no_public_tests").inc()
            log.warning("problem %s has no public tests: not used", p.problem_id)
    if not usable:
        raise DataError(f"actor {index} of {count}: no problem with public tests in its shard of {len(problems)} problems")
    epoch = 0
    while True:
        order = list(usable)
        random.Random(f"{seed}-{index}-{epoch}").shuffle(order)
        yield from order
        epoch += 1
