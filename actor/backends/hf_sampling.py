"""Sampling in the hf decode engine: the behaviour log-probs (the invariant in :mod:`rlef.actor.backends.base`).

Each token is drawn from the logits after transformers' own temperature / top-k / top-p warpers (the ones
``generate`` applies, in its order), and its log-prob is read from the log-softmax of those same processed
logits. Greedy rows take the argmax and report the raw model log-probs.
"""

from __future__ import annotations

from typing import Any

from rlef.actor.backends.base import Sampling
from rlef.actor.backends.hf_decode_batch import Row


def warpers(sampling: Sampling) -> list[Any]:
    """transformers' sampling warpers, in the order ``generate`` applies them (utils._get_logits_processor)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    return out


def sample_tokens(logits: Any, rows: list[Row]) -> tuple[Any, Any]:
    """One token per row from its processed distribution, and that token's log-prob under it."""
    import torch

    logits = logits.float()
    tokens = torch.empty(len(rows), dtype=torch.long)
    logps = torch.empty(len(rows))
    groups: dict[tuple[float, int, float], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.sampling.temperature, r.sampling.top_k, r.sampling.top_p), []).append(i)
    for (temperature, _, _), index in groups.items():
        sub = logits[index]
        if temperature <= 0:
            chosen = sub.argmax(-1)
            logp = torch.log_softmax(sub, -1)
        else:
            scores = sub
            for warper in warpers(rows[index[0]].sampling):
                scores = warper(None, scores)
            chosen = torch.multinomial(torch.softmax(scores, -1), 1)[:, 0]
            logp = torch.log_softmax(scores, -1)
        tokens[index] = chosen.cpu()
        logps[index] = logp.gather(1, chosen[:, None])[:, 0].cpu()
    return tokens, logps
