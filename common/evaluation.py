"""Evaluation estimators of the paper's protocol: pass@k (Chen et al. 2021), n@k (Li et al. 2022) for
multi-turn rollouts, and bootstrap confidence intervals over problems.

n@k with multi-turn episodes (Gehring et al. 2025): every turn counts as a sample, so a budget of k samples
buys ``k // max_turns`` rollouts (1@3 = one rollout of up to 3 turns; 10@100 = 33 rollouts). Each rollout
yields one candidate, its final program. Of the m rollouts drawn, n are submitted; the paper does not say
how they are chosen, so we take the AlphaCode rule: candidates that pass the public tests first, uniformly
at random among them, then the rest. A correct program passes the public tests by construction (it is scored
on public + private), which makes the expectation exact over (public-passing, correct) counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct={num_correct} outside [0, {num_samples}]")
    if not 1 <= k <= num_samples:
        raise ValueError(f"k={k} outside [1, {num_samples}]")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


@dataclass(frozen=True)
class ProblemRollouts:
    """Outcomes of R rollouts of one problem: how many final programs pass the public tests / all tests."""

    num_rollouts: int
    num_public_pass: int
    num_correct: int

    def __post_init__(self) -> None:
        if not 0 <= self.num_correct <= self.num_public_pass <= self.num_rollouts:
            raise ValueError(f"need 0 <= correct <= public_pass <= rollouts, got {self}")


def n_at_k(problem: ProblemRollouts, n: int, k: int, max_turns: int) -> float:
    """Expected solve probability with n submissions chosen from a budget of k samples (turns)."""
    m = k // max_turns
    if m < 1:
        raise ValueError(f"a budget of k={k} samples buys no rollout of {max_turns} turns")
    if m > problem.num_rollouts:
        raise ValueError(f"k={k} needs {m} rollouts, only {problem.num_rollouts} were sampled")
    total = comb(problem.num_rollouts, m)
    a = problem.num_correct
    b = problem.num_public_pass - problem.num_correct
    rest = problem.num_rollouts - problem.num_public_pass
    expectation = 0.0
    for drawn_correct in range(0, min(a, m) + 1):
        for drawn_wrong_public in range(0, min(b, m - drawn_correct) + 1):
            drawn_rest = m - drawn_correct - drawn_wrong_public
            if drawn_rest > rest:
                continue
            weight = comb(a, drawn_correct) * comb(b, drawn_wrong_public) * comb(rest, drawn_rest) / total
            public = drawn_correct + drawn_wrong_public
            if drawn_correct == 0:
                solved = 0.0
            elif public <= n:
                solved = 1.0
            else:
                solved = 1.0 - comb(public - drawn_correct, n) / comb(public, n)
            expectation += weight * solved
    return expectation


def bootstrap_ci(
    per_problem: Sequence[float], *, resamples: int = 200, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over problems and its bootstrap confidence interval (the paper: 200 resamples, 95%)."""
    values = np.asarray(per_problem, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no problems to estimate over")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 200, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same problems and its paired bootstrap CI: each resample draws problems
    once and takes both models' values of the drawn problems, so problem difficulty cancels out of the
    interval (narrower than comparing two unpaired intervals, and the right test for "B beats A")."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same problems: {len(a)} vs {len(b)}")
    return bootstrap_ci([x - y for x, y in zip(a, b)], resamples=resamples, confidence=confidence, seed=seed)
