"""Response-token log-probabilities without materialising full-vocabulary logits.

Why: the policy forward's ``[batch, tokens, vocab]`` logits (plus their float32 log-softmax, plus the
gradient of both in backward) dominate a micro-batch's peak memory at Llama 3.1's 128k vocabulary, while the
objective needs one number per response token. Here the LM head is applied to the response positions'
hidden states only, ``rows`` at a time, with activation checkpointing per chunk: forward keeps each
chunk's log-prob of its target (and, on request, its entropy), backward recomputes one chunk's logits at a
time. Peak memory from the head is then about ``chunk_elements`` floats (a few times over), whatever the
vocabulary; compute is one extra head matmul in backward.

How it plugs in: :func:`response_logprobs` runs the model's own forward with its ``lm_head`` temporarily
replaced (instance ``forward``) by the chunked computation, so FSDP2's root hooks, mixed precision and the
decoder layers' activation checkpointing run exactly as for the plain forward, and the head's weight is the
unsharded one the root forward holds.

The numbers are those of :func:`rlef.learner.objective.token_logprobs` (log-softmax in float32, or float64
for float64 logits) on the same logits; a test checks values and gradients against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rlef.learner import objective as O

CHUNK_ELEMENTS = 1 << 24
"""Logit elements per chunk (64 MiB in float32): rows per chunk = max(1, CHUNK_ELEMENTS // vocab)."""


def _chunk(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, want_entropy: bool) -> tuple[Tensor, Tensor]:
    logits = F.linear(h, weight, bias)
    logp = O.token_logprobs(logits, targets)
    ent = O.entropy(logits.detach()) if want_entropy else logp.new_zeros(0)
    return logp, ent


def chunked_token_logprobs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, *, chunk_elements: int = CHUNK_ELEMENTS,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ weight.T + bias)[target] per row (and each row's entropy, no grad), chunk by chunk.

    ``hidden``: [N, H] hidden states of the positions whose next token is ``targets`` [N]."""
    vocab = weight.shape[0]
    rows = max(1, chunk_elements // max(vocab, 1))
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logps, ents = [], []
    for start in range(0, hidden.shape[0], rows):
        args = (hidden[start : start + rows], weight, bias, targets[start : start + rows], with_entropy)
        if grad:  # keep only the chunk's inputs; backward recomputes its logits
            logp, ent = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            logp, ent = _chunk(*args)
        logps.append(logp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(ents) if with_entropy else None)


@contextmanager
def _head_replaced(head: nn.Module, forward) -> Iterator[None]:
    head.forward = forward  # an instance attribute shadows the class's forward for this call only
    try:
        yield
    finally:
        del head.forward


def response_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, cols: Tensor, targets: Tensor, *,
    chunk_elements: int = CHUNK_ELEMENTS, with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The model's log-prob of ``targets`` at positions (``rows``, ``cols``) of the batch (each position's
    next token), and optionally the entropy there, through the model's own forward (see the module docstring)."""
    head = model.lm_head
    found: dict[str, Tensor | None] = {}

    def chunked_head(hidden: Tensor) -> Tensor:
        picked = hidden[rows, cols]  # [N, H]: the head never sees the other positions
        logp, ent = chunked_token_logprobs(picked, head.weight, head.bias, targets, chunk_elements=chunk_elements,
                                           with_entropy=with_entropy)
        found["entropy"] = ent
        return logp

    with _head_replaced(head, chunked_head):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits, found.get("entropy")
