"""Every RLEF objective formula against a deliberately slow reference: python loops over floats (float64).

The reference works on nested lists (episode -> turn -> token) written straight from the paper's formulas,
sharing no code with rlef.learner.objective; the vectorised versions run on random ragged inputs in float64.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from rlef.learner import objective as O

REL = 1e-6


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(1.0, abs(a), abs(b))


def make_episodes(seed: int, episodes: int = 7, max_turns: int = 4) -> list[list[dict]]:
    """Random ragged episodes: each turn has n tokens with logpi, logpi_old, logrho, logpi_b, a reward and V."""
    rng = random.Random(seed)
    out = []
    for _ in range(episodes):
        turns = []
        for _ in range(rng.randint(1, max_turns)):
            n = rng.randint(1, 9)
            turns.append({
                "logpi": [rng.uniform(-6, -0.01) for _ in range(n)],
                "logpi_old": [rng.uniform(-6, -0.01) for _ in range(n)],
                "logrho": [rng.uniform(-6, -0.01) for _ in range(n)],
                "logpi_b": [rng.uniform(-6, -0.01) for _ in range(n)],
                "r": rng.choice([0.0, -0.2, 1.0, -1.0, -1.2]),
                "V": rng.uniform(-1.5, 1.5),
                "V_old": rng.uniform(-1.5, 1.5),
            })
        out.append(turns)
    return out


def to_tensors(eps: list[list[dict]]) -> dict[str, torch.Tensor]:
    E, K = len(eps), max(len(e) for e in eps)
    mask = torch.zeros(E, K, dtype=torch.bool)
    r = torch.zeros(E, K, dtype=torch.float64)
    V = torch.zeros(E, K, dtype=torch.float64)
    V_old = torch.zeros(E, K, dtype=torch.float64)
    cols: dict[str, list[float]] = {k: [] for k in ("logpi", "logpi_old", "logrho", "logpi_b")}
    token_turn: list[int] = []
    for e, turns in enumerate(eps):
        for t, turn in enumerate(turns):
            mask[e, t] = True
            r[e, t], V[e, t], V_old[e, t] = turn["r"], turn["V"], turn["V_old"]
            for k in cols:
                cols[k].extend(turn[k])
            token_turn.extend([e * K + t] * len(turn["logpi"]))
    out = {k: torch.tensor(v, dtype=torch.float64) for k, v in cols.items()}
    out.update(mask=mask, r=r, V=V, V_old=V_old, token_turn=torch.tensor(token_turn), E=E, K=K)
    return out


# ---------------------------------------------------------------- slow references


def ref_kl(turn: dict) -> float:
    s = 0.0
    for a, b in zip(turn["logpi"], turn["logrho"]):
        s += a - b
    return s / len(turn["logpi"])


def ref_returns(eps, beta):
    out = []
    for turns in eps:
        R = [turn["r"] - beta * ref_kl(turn) for turn in turns]
        G = []
        for t in range(len(R)):
            total = 0.0
            for i in range(t, len(R)):
                total += R[i]
            G.append(total)
        out.append(G)
    return out


def ref_advantages(eps, beta, normalize):
    G = ref_returns(eps, beta)
    A = [[G[e][t] - eps[e][t]["V"] for t in range(len(eps[e]))] for e in range(len(eps))]
    if normalize:
        flat = [a for row in A for a in row]
        mean = sum(flat) / len(flat)
        var = sum((a - mean) ** 2 for a in flat) / len(flat)
        A = [[(a - mean) / (math.sqrt(var) + 1e-8) for a in row] for row in A]
    return A


def ref_policy_loss(eps, A, clip, dual_clip=None):
    total, n = 0.0, 0
    for e, turns in enumerate(eps):
        for t, turn in enumerate(turns):
            for j in range(len(turn["logpi"])):
                w = min(math.exp(turn["logpi"][j] - turn["logpi_b"][j]), 1.0)
                ratio = math.exp(turn["logpi"][j] - turn["logpi_old"][j]) * w
                clipped = min(max(ratio, 1 - clip), 1 + clip)
                objective = min(ratio * A[e][t], clipped * A[e][t])
                if dual_clip is not None and A[e][t] < 0:
                    objective = max(objective, dual_clip * A[e][t])
                total += -objective
                n += 1
    return total / n


def ref_value_loss(eps, G, c):
    total, n = 0.0, 0
    for e, turns in enumerate(eps):
        for t, turn in enumerate(turns):
            V, V_old, R = turn["V"], turn["V_old"], G[e][t]
            V_clip = min(max(V, V_old - c), V_old + c)
            total += 0.5 * max((V - R) ** 2, (V_clip - R) ** 2)
            n += 1
    return total / n


# ---------------------------------------------------------------- tests

SEEDS = [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
def test_turn_kl_is_geometric_mean_log_ratio(seed):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    kl = O.turn_kl(T["logpi"], T["logrho"], T["token_turn"], T["E"] * T["K"]).reshape(T["E"], T["K"])
    for e, turns in enumerate(eps):
        for t, turn in enumerate(turns):
            assert close(kl[e, t].item(), ref_kl(turn))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.0, 0.05, 0.7])
def test_penalized_monte_carlo_returns(seed, beta):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    kl = O.turn_kl(T["logpi"], T["logrho"], T["token_turn"], T["E"] * T["K"]).reshape(T["E"], T["K"])
    G = O.monte_carlo_returns(O.penalized_rewards(T["r"], kl, beta, T["mask"]), T["mask"])
    ref = ref_returns(eps, beta)
    for e, turns in enumerate(eps):
        for t in range(K := T["K"]):
            expected = ref[e][t] if t < len(turns) else 0.0
            assert close(G[e, t].item(), expected), (e, t, K)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [False, True])
def test_turn_advantages(seed, normalize):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    kl = O.turn_kl(T["logpi"], T["logrho"], T["token_turn"], T["E"] * T["K"]).reshape(T["E"], T["K"])
    G = O.monte_carlo_returns(O.penalized_rewards(T["r"], kl, 0.05, T["mask"]), T["mask"])
    A = O.turn_advantages(G, T["V"], T["mask"])
    if normalize:
        A = O.normalize_advantages(A, T["mask"], *O.masked_moments(A, T["mask"]))
    ref = ref_advantages(eps, 0.05, normalize)
    for e, turns in enumerate(eps):
        for t in range(len(turns)):
            assert close(A[e, t].item(), ref[e][t])
    assert (A[~T["mask"]] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip", [0.2, 0.05])
def test_policy_loss_token_level_with_truncated_importance_weight(seed, clip):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    A_ref = ref_advantages(eps, 0.05, True)
    A_tok = torch.tensor([A_ref[e][t] for e, turns in enumerate(eps) for t, turn in enumerate(turns)
                          for _ in turn["logpi"]], dtype=torch.float64)
    ratio = O.importance_ratio(T["logpi"], T["logpi_old"], T["logpi_b"])
    loss = O.policy_loss(ratio, A_tok, clip)
    assert close(loss.item(), ref_policy_loss(eps, A_ref, clip))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dual_clip", [1.5, 3.0])
def test_dual_clip_matches_the_scalar_reference(seed, dual_clip):
    eps = make_episodes(seed)
    for turns in eps:  # large ratios, so the dual clip is active on some tokens
        for turn in turns:
            turn["logpi_old"] = [v - 1.5 for v in turn["logpi_old"]]
    T = to_tensors(eps)
    A_ref = ref_advantages(eps, 0.05, True)
    A_tok = torch.tensor([A_ref[e][t] for e, turns in enumerate(eps) for t, turn in enumerate(turns)
                          for _ in turn["logpi"]], dtype=torch.float64)
    ratio = O.importance_ratio(T["logpi"], T["logpi_old"], T["logpi_b"])
    assert bool(((ratio > dual_clip) & (A_tok < 0)).any())  # the case under test occurs
    assert close(O.policy_loss(ratio, A_tok, 0.2, dual_clip).item(), ref_policy_loss(eps, A_ref, 0.2, dual_clip))
    assert not close(O.policy_loss(ratio, A_tok, 0.2, dual_clip).item(), O.policy_loss(ratio, A_tok, 0.2).item())


def test_dual_clip_bounds_the_loss_and_stops_the_gradient_of_large_ratios_with_negative_advantages():
    logpi = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    old = torch.log(torch.tensor([1 / 10, 1 / 2, 1 / 10, 1.0], dtype=torch.float64))  # ratios 10, 2, 10, 1
    A = torch.tensor([-1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    terms = O.policy_loss_terms(O.importance_ratio(logpi, old, logpi.detach()), A, 0.2, 3.0)
    terms.sum().backward()
    # ratio 10, A<0: plain PPO would give loss 10 with gradient 10; the dual clip caps it at 3 with no gradient.
    assert close(terms[0].item(), 3.0) and close(logpi.grad[0].item(), 0.0)
    assert close(terms[1].item(), 2.0) and close(logpi.grad[1].item(), 2.0)  # under the cap: plain PPO
    assert close(terms[2].item(), -1.2) and close(logpi.grad[2].item(), 0.0)  # A>0: the ordinary clip
    assert close(terms[3].item(), 1.0) and close(logpi.grad[3].item(), 1.0)


def test_truncated_weight_carries_no_gradient():
    logpi = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-1.1, -1.9, -0.7], dtype=torch.float64)
    behaviour = torch.tensor([-2.0, -0.5, -0.4], dtype=torch.float64)
    A = torch.tensor([0.3, -0.4, 1.0], dtype=torch.float64)
    O.policy_loss_terms(O.importance_ratio(logpi, old, behaviour), A, 10.0).sum().backward()
    # With the clip inactive, d/dlogpi of -ratio*A with w detached is -ratio*A (ratio = exp(logpi-old)*w).
    for j in range(3):
        w = min(math.exp(logpi[j].item() - behaviour[j].item()), 1.0)
        ratio = math.exp(logpi[j].item() - old[j].item()) * w
        assert close(logpi.grad[j].item(), -ratio * A[j].item())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", [0.2, 0.01])
def test_clipped_value_loss(seed, c):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    G_ref = ref_returns(eps, 0.05)
    m = T["mask"]
    G = torch.tensor([[G_ref[e][t] if t < len(eps[e]) else 0.0 for t in range(T["K"])] for e in range(T["E"])],
                     dtype=torch.float64)
    loss = O.value_loss(T["V"][m], T["V_old"][m], G[m], c)
    assert close(loss.item(), ref_value_loss(eps, G_ref, c))


@pytest.mark.parametrize("seed", SEEDS)
def test_diagnostics(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 11, dtype=torch.float64, generator=g) * 3
    targets = torch.randint(0, 11, (5,), generator=g)
    lp = O.token_logprobs(logits, targets)
    ent = O.entropy(logits)
    for i in range(5):
        row = logits[i].tolist()
        z = math.log(sum(math.exp(x) for x in row))
        assert close(lp[i].item(), row[targets[i]] - z)
        assert close(ent[i].item(), -sum(math.exp(x - z) * (x - z) for x in row))
    new = torch.randn(40, dtype=torch.float64, generator=g) * 0.3 - 1
    old = torch.randn(40, dtype=torch.float64, generator=g) * 0.3 - 1
    r = [math.exp(a - b) for a, b in zip(new.tolist(), old.tolist())]
    assert close(O.approx_kl(new, old).item(), sum(x - 1 - math.log(x) for x in r) / len(r))
    assert close(O.clip_fraction(torch.tensor(r, dtype=torch.float64), 0.2).item(),
                 sum(1 for x in r if abs(x - 1) > 0.2) / len(r))
    V, G = new.tolist(), old.tolist()
    mg = sum(G) / len(G)
    d = [gg - v for gg, v in zip(G, V)]
    md = sum(d) / len(d)
    ev = 1 - (sum((x - md) ** 2 for x in d) / len(d)) / (sum((x - mg) ** 2 for x in G) / len(G))
    assert close(O.explained_variance(new, old).item(), ev)


def _shards(n: int, parts: int, seed: int) -> list[slice]:
    """Split range(n) into ``parts`` contiguous uneven slices (as ranks and micro-batches split tokens)."""
    cuts = sorted(random.Random(seed).sample(range(1, n), parts - 1))
    bounds = [0, *cuts, n]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("seed", SEEDS)
def test_sharded_sums_of_the_terms_equal_the_whole_batch_means(seed):
    """What ppo.py logs: per-shard sums of the _terms, added, over the global count == the plain mean."""
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(60, dtype=torch.float64, generator=g) * 0.3 - 1
    old = torch.randn(60, dtype=torch.float64, generator=g) * 0.3 - 1
    ratio = torch.exp(new - old)
    parts = _shards(60, 4, seed)
    for whole, terms in ((O.clip_fraction(ratio, 0.2), O.clip_fraction_terms(ratio, 0.2)),
                         (O.approx_kl(new, old), O.approx_kl_terms(new, old)),
                         (O.mismatch_kl(new, old), O.mismatch_kl_terms(new, old)),
                         (O.truncation_fraction(new, old), O.truncation_terms(new, old))):
        assert close(sum(terms[p].sum().item() for p in parts) / 60, whole.item())
    G, V = new, old
    moments = [sum(x) for x in zip(*[(G[p].sum(), (G[p] ** 2).sum(), (G[p] - V[p]).sum(), ((G[p] - V[p]) ** 2).sum(), len(G[p]))
                                     for p in parts])]
    assert close(O.explained_variance_from_moments(*moments), O.explained_variance(V, G).item())


def test_explained_variance_is_nan_for_constant_returns():
    G = torch.full((5,), 0.7, dtype=torch.float64)
    assert math.isnan(O.explained_variance(torch.zeros(5, dtype=torch.float64), G).item())
    assert math.isnan(O.explained_variance_from_moments(0.0, 0.0, 0.0, 0.0, 0))


@pytest.mark.parametrize("seed", SEEDS)
def test_mismatch_kl_is_the_exact_kl_in_expectation_under_the_behaviour_policy(seed):
    """Over a small vocabulary, weighting every token's term by pi_b(token) (the expectation the sampled mean
    estimates) gives sum_x pi_b(x) log(pi_b(x)/pi_old(x)), computed here from the two distributions directly."""
    rng = random.Random(seed)
    vocab = 7
    raw_b = [rng.uniform(0.05, 1.0) for _ in range(vocab)]
    raw_old = [p * math.exp(rng.uniform(-0.4, 0.4)) for p in raw_b]
    p_b = [p / sum(raw_b) for p in raw_b]
    p_old = [p / sum(raw_old) for p in raw_old]
    exact = sum(b * math.log(b / o) for b, o in zip(p_b, p_old))
    terms = O.mismatch_kl_terms(torch.tensor([math.log(p) for p in p_old], dtype=torch.float64),
                                torch.tensor([math.log(p) for p in p_b], dtype=torch.float64))
    assert close(sum(b * t for b, t in zip(p_b, terms.tolist())), exact)
    # On sampled tokens: the plain mean of the scalar k3 formula, and 0 when both sides agree token for token.
    lo, lb = [rng.uniform(-6, -0.01) for _ in range(30)], [rng.uniform(-6, -0.01) for _ in range(30)]
    ref = sum(math.exp(o - b) - 1 - (o - b) for o, b in zip(lo, lb)) / 30
    assert close(O.mismatch_kl(torch.tensor(lo, dtype=torch.float64), torch.tensor(lb, dtype=torch.float64)).item(), ref)
    same = torch.tensor(lb, dtype=torch.float64)
    assert O.mismatch_kl(same, same).item() == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_truncation_fraction_counts_the_tokens_where_the_weight_is_truncated(seed):
    eps = make_episodes(seed)
    T = to_tensors(eps)
    ref_count, n = 0, 0
    for turns in eps:
        for turn in turns:
            for a, b in zip(turn["logpi"], turn["logpi_b"]):
                ref_count += 1 if min(math.exp(a - b), 1.0) < math.exp(a - b) else 0
                n += 1
    assert 0 < ref_count < n  # both kinds of token occur
    assert close(O.truncation_fraction(T["logpi"], T["logpi_b"]).item(), ref_count / n)
    # The flagged tokens are exactly those where importance_ratio's weight is 1 instead of pi/pi_b
    # (with pi_old = pi, so the ratio is the weight alone).
    weight = O.importance_ratio(T["logpi"], T["logpi"], T["logpi_b"])
    flagged = O.truncation_terms(T["logpi"], T["logpi_b"]).bool()
    assert (weight[flagged] == 1.0).all()
    assert torch.equal(weight[~flagged], torch.exp(T["logpi"] - T["logpi_b"])[~flagged])
