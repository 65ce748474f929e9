"""Evaluation estimators against brute-force enumeration of every draw."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from rlef.common.evaluation import ProblemRollouts, bootstrap_ci, n_at_k, pass_at_k


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    draws = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in d) for d in draws) / len(draws)


def brute_n_at_k(kinds: list[str], n: int, m: int) -> float:
    """kinds: 'c' correct (passes public too), 'p' passes public only, 'f' fails public. Exact expectation over
    every draw of m rollouts and every uniformly random choice of submissions (public-passing first)."""
    total = 0.0
    draws = list(itertools.combinations(range(len(kinds)), m))
    for draw in draws:
        public = [i for i in draw if kinds[i] in "cp"]
        others = [i for i in draw if kinds[i] == "f"]
        if len(public) >= n:
            choices = list(itertools.combinations(public, n))
            total += sum(any(kinds[i] == "c" for i in c) for c in choices) / len(choices)
        else:
            total += float(any(kinds[i] == "c" for i in public + others))
    return total / len(draws)


@pytest.mark.parametrize("seed", range(20))
def test_pass_at_k_matches_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randint(1, 9)
    outcomes = [rng.random() < 0.4 for _ in range(size)]
    k = rng.randint(1, size)
    assert pass_at_k(size, sum(outcomes), k) == pytest.approx(brute_pass_at_k(outcomes, k), rel=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_n_at_k_matches_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randint(1, 8)
    kinds = [rng.choice("cpf") for _ in range(size)]
    turns = rng.choice([1, 3])
    m = rng.randint(1, size)
    n = rng.randint(1, m)
    problem = ProblemRollouts(size, sum(k in "cp" for k in kinds), kinds.count("c"))
    assert n_at_k(problem, n, m * turns, turns) == pytest.approx(brute_n_at_k(kinds, n, m), abs=1e-12)


def test_one_at_three_is_the_solve_rate_of_one_rollout() -> None:
    problem = ProblemRollouts(num_rollouts=200, num_public_pass=70, num_correct=31)
    assert n_at_k(problem, 1, 3, 3) == pytest.approx(31 / 200)


def test_estimator_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        ProblemRollouts(10, 2, 3)
    with pytest.raises(ValueError):
        n_at_k(ProblemRollouts(10, 3, 2), 1, 2, 3)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_bootstrap_interval_brackets_the_mean_and_matches_numpy() -> None:
    values = np.random.default_rng(1).random(50)
    mean, low, high = bootstrap_ci(values, resamples=200, seed=3)
    rng = np.random.default_rng(3)
    reference = [values[rng.integers(0, 50, 50)].mean() for _ in range(200)]
    assert mean == pytest.approx(values.mean())
    assert low == pytest.approx(np.quantile(reference, 0.025)) and high == pytest.approx(np.quantile(reference, 0.975))
    assert low < mean < high


def test_paired_difference_ci_resamples_problems_jointly() -> None:
    from rlef.common.evaluation import paired_difference_ci

    rng = random.Random(4)
    base = [rng.random() for _ in range(60)]
    better = [min(1.0, b + 0.2) for b in base]
    mean, low, high = paired_difference_ci(better, base, resamples=500, seed=1)
    # Independent reference: numpy resampling of the same problem indices for both models.
    g = np.random.default_rng(1)
    idx = g.integers(0, 60, size=(500, 60))
    diffs = (np.asarray(better)[idx] - np.asarray(base)[idx]).mean(axis=1)
    assert mean == pytest.approx(float(np.mean(better) - np.mean(base)))
    assert (low, high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    # Pairing removes the spread of problem difficulty: much narrower than the unpaired intervals.
    _, lb, hb = bootstrap_ci(base, resamples=500, seed=1)
    assert high - low < 0.5 * (hb - lb)
    with pytest.raises(ValueError, match="same problems"):
        paired_difference_ci([1.0], [1.0, 0.0])
