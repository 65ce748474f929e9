"""The RLEF objective (Gehring et al. 2025) as short pure torch functions with the paper's names.

Scope: the arithmetic of one PPO update, nothing about models, sharding or data. Every function here is
tested against a slow float64 reference (tests/learner/test_learner_objective.py).

Layouts
- Turn-level quantities are ``[E, K]`` tensors: E episodes (rollouts) padded to K turns, with a boolean
  ``turn_mask`` marking real turns. Padding turns hold zeros and never contribute.
- Token-level quantities are flat ``[N]`` tensors over response tokens only, with ``token_turn`` giving the
  flat turn index ``e * K + t`` of each token (so ``turn_quantity.reshape(-1)[token_turn]`` broadcasts a
  turn's value to its tokens).

Method facts (docs/method.md, reference rlef-method.md):
- KL_t = (1/|a_t|) sum_j [log pi(a_t^j) - log rho(a_t^j)]: log of the geometric-mean probability ratio.
- R_t = r_t - beta * KL_t; G_t = sum_{i>=t} R_i (gamma = lambda = 1); A_t = G_t - V(c_t), one per turn,
  shared by every token of the turn's response.
- ratio = pi/pi_old * stopgrad(min(pi/pi_b, 1)); L_pi = -E_tokens[min(ratio A, clip(ratio, 1-eps, 1+eps) A)]
  (optionally dual-clipped for A < 0: max(that, c A); not in the paper, off by default).
- L_V = 0.5 * E_turns[max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)].

Where the KL is computed: the learner re-scores. Before a batch's U updates it runs its own forward passes of
the current policy (giving log pi_old, which is also the pi of KL_t) and of the frozen reference rho over the
whole batch; the behaviour log-probs sent by the actors serve only the truncated importance weight (and the
mismatch-KL diagnostic, which compares them with log pi_old). So KL_t is measured with the policy the updates
start from, and is fixed (no gradient) during the U updates.
"""

from __future__ import annotations

import torch
from torch import Tensor


def turn_kl(logpi: Tensor, logrho: Tensor, token_turn: Tensor, num_turns: int) -> Tensor:
    """KL_t per flat turn: mean over the turn's response tokens of log pi - log rho (0 for empty turns)."""
    diff = (logpi - logrho).to(torch.float64 if logpi.dtype == torch.float64 else torch.float32)
    total = torch.zeros(num_turns, dtype=diff.dtype, device=diff.device).index_add_(0, token_turn, diff)
    count = torch.zeros(num_turns, dtype=diff.dtype, device=diff.device).index_add_(0, token_turn, torch.ones_like(diff))
    return total / count.clamp(min=1)


def penalized_rewards(rewards: Tensor, kl: Tensor, beta: float, turn_mask: Tensor) -> Tensor:
    """R_t = r_t - beta * KL_t on real turns; 0 on padding."""
    return torch.where(turn_mask, rewards - beta * kl, torch.zeros_like(rewards))


def monte_carlo_returns(R: Tensor, turn_mask: Tensor) -> Tensor:
    """G_t = sum_{i>=t} R_i within each episode (gamma = 1): a reverse cumulative sum over the turn axis."""
    R = torch.where(turn_mask, R, torch.zeros_like(R))
    G = torch.flip(torch.cumsum(torch.flip(R, dims=[-1]), dim=-1), dims=[-1])
    return torch.where(turn_mask, G, torch.zeros_like(G))


def turn_advantages(G: Tensor, V: Tensor, turn_mask: Tensor) -> Tensor:
    """A_t = G_t - V(c_t) (lambda = 1: no bootstrapping), 0 on padding."""
    return torch.where(turn_mask, G - V, torch.zeros_like(G))


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum, sum of squares, count) of the masked entries: the all-reducible sufficient statistics."""
    m = mask.to(x.dtype)
    return (x * m).sum(), (x * x * m).sum(), m.sum()


def normalize_advantages(A: Tensor, mask: Tensor, total: Tensor, total_sq: Tensor, count: Tensor, eps: float = 1e-8) -> Tensor:
    """(A - mean) / (std + eps) with mean/std from (possibly all-reduced) moments; population std, over turns."""
    mean = total / count.clamp(min=1)
    var = (total_sq / count.clamp(min=1) - mean * mean).clamp(min=0)
    return torch.where(mask, (A - mean) / (var.sqrt() + eps), torch.zeros_like(A))


def importance_ratio(logpi: Tensor, logpi_old: Tensor, logpi_b: Tensor) -> Tensor:
    """pi/pi_old * stopgrad(min(pi/pi_b, 1)): PPO ratio times the truncated off-policy weight of the actor."""
    truncated = torch.clamp(torch.exp(logpi - logpi_b), max=1.0).detach()
    return torch.exp(logpi - logpi_old) * truncated


def policy_loss_terms(ratio: Tensor, advantages: Tensor, clip_eps: float, dual_clip: float | None = None) -> Tensor:
    """Per-token -min(ratio A, clip(ratio, 1-eps, 1+eps) A); average (or sum then divide) over tokens.

    With ``dual_clip`` c, tokens with A < 0 use -max(min(ratio A, clip(ratio) A), c A): the plain clip leaves
    ratio * A unbounded when A < 0 and the ratio is large, and one such token can dominate a whole update."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    objective = torch.minimum(unclipped, clipped)
    if dual_clip is not None:
        objective = torch.where(advantages < 0, torch.maximum(objective, dual_clip * advantages), objective)
    return -objective


def policy_loss(ratio: Tensor, advantages: Tensor, clip_eps: float, dual_clip: float | None = None) -> Tensor:
    """L_pi = -E[min(ratio A, clip(ratio) A)] over response tokens (token-level mean); see policy_loss_terms."""
    return policy_loss_terms(ratio, advantages, clip_eps, dual_clip).mean()


def value_loss_terms(V: Tensor, V_old: Tensor, G: Tensor, value_clip: float) -> Tensor:
    """Per-turn 0.5 * max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)."""
    V_clipped = V_old + torch.clamp(V - V_old, -value_clip, value_clip)
    return 0.5 * torch.maximum((V - G) ** 2, (V_clipped - G) ** 2)


def value_loss(V: Tensor, V_old: Tensor, G: Tensor, value_clip: float) -> Tensor:
    """L_V: mean over turns of :func:`value_loss_terms`."""
    return value_loss_terms(V, V_old, G, value_clip).mean()


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position, computed in float32 (or float64) for stability."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: -sum p log p."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def clip_fraction_terms(ratio: Tensor, clip_eps: float) -> Tensor:
    """Per token 1 where the ratio lies outside [1 - eps, 1 + eps] (the clip is active), else 0.

    The ``_terms`` forms exist so the sharded learner can sum them per rank and divide by the global token
    count (the mean of the whole update, whatever the split); the plain forms are their means."""
    return ((ratio - 1.0).abs() > clip_eps).to(ratio.dtype)


def clip_fraction(ratio: Tensor, clip_eps: float) -> Tensor:
    """Fraction of tokens whose ratio lies outside [1 - eps, 1 + eps] (where the clip is active)."""
    return clip_fraction_terms(ratio, clip_eps).mean()


def approx_kl_terms(logpi: Tensor, logpi_old: Tensor) -> Tensor:
    """Per-token k3 term (r - 1) - log r with r = pi/pi_old; its mean over tokens drawn from pi_old is KL(pi_old || pi)."""
    log_r = logpi - logpi_old
    return torch.exp(log_r) - 1.0 - log_r


def approx_kl(logpi: Tensor, logpi_old: Tensor) -> Tensor:
    """k3 estimator of KL(pi_old || pi): E[(r - 1) - log r] with r = pi/pi_old; non-negative, unbiased."""
    return approx_kl_terms(logpi, logpi_old).mean()


def mismatch_kl_terms(logpi_old: Tensor, logpi_b: Tensor) -> Tensor:
    """Per-token k3 term of KL(pi_b || pi_old): the actor's behaviour policy against the learner's re-scoring.

    The tokens were sampled from pi_b, so the k3 estimator takes r = pi_old/pi_b. At policy lag 0 both sides
    hold the same weights, so the mean is near 0 (rounding of the two inference stacks only); a rise means the
    tokens or the behaviour log-probs do not match what the learner scores (a tokenization, template or
    inference-backend fault), or that the rollouts are stale."""
    return approx_kl_terms(logpi_old, logpi_b)


def mismatch_kl(logpi_old: Tensor, logpi_b: Tensor) -> Tensor:
    """k3 estimate of KL(pi_b || pi_old) over response tokens sampled from pi_b; see mismatch_kl_terms."""
    return mismatch_kl_terms(logpi_old, logpi_b).mean()


def truncation_terms(logpi: Tensor, logpi_b: Tensor) -> Tensor:
    """Per token 1 where :func:`importance_ratio` truncates its off-policy weight min(pi/pi_b, 1), else 0.

    Same expression as the weight (exp then compare to 1), so a token counts exactly when the clamp changes the
    value. At lag 0, pi and pi_b differ by rounding only and about half of the tokens count, each truncated by a
    negligible amount: read this fraction together with the mismatch KL."""
    return (torch.exp(logpi - logpi_b) > 1.0).to(logpi.dtype)


def truncation_fraction(logpi: Tensor, logpi_b: Tensor) -> Tensor:
    """Fraction of tokens whose off-policy weight min(pi/pi_b, 1) is truncated (pi > pi_b)."""
    return truncation_terms(logpi, logpi_b).mean()


def explained_variance_from_moments(g_sum: float, g_sq: float, d_sum: float, d_sq: float, count: float) -> float:
    """1 - Var(G - V) / Var(G) from the (all-reducible) sums of G, G^2, G - V, (G - V)^2 over ``count`` turns.

    Population variances; NaN when the returns have no variance (a constant reward batch), where the ratio has
    no meaning."""
    n = max(float(count), 1.0)
    var_g = float(g_sq) / n - (float(g_sum) / n) ** 2
    var_d = float(d_sq) / n - (float(d_sum) / n) ** 2
    return 1.0 - var_d / var_g if var_g > 0 else float("nan")


def explained_variance(V: Tensor, G: Tensor) -> Tensor:
    """1 - Var(G - V) / Var(G) (population variances); NaN when the returns have no variance.

    Goes through the moment form, which the sharded learner all-reduces, so both give the same number."""
    everywhere = torch.ones_like(G, dtype=torch.bool)
    g_sum, g_sq, count = masked_moments(G, everywhere)
    d_sum, d_sq, _ = masked_moments(G - V, everywhere)
    return torch.tensor(explained_variance_from_moments(g_sum, g_sq, d_sum, d_sq, count), dtype=G.dtype)
