"""Chunked response log-probs (rlef.learner.logprobs) equal the full-logits computation, values and
gradients, on random heads and on a real Llama forward; chunking is what bounds the head's memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlef.learner import objective as O
from rlef.learner.logprobs import chunked_token_logprobs, response_logprobs


@pytest.mark.parametrize("chunk_elements", [1, 7 * 50, 1 << 24])  # one row a chunk, 7 rows, everything at once
def test_chunked_logprobs_and_gradients_equal_the_full_logits(chunk_elements: int) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=g)
    coef = torch.randn(23, generator=g, dtype=torch.float64)

    ref = O.token_logprobs(F.linear(hidden, weight, bias), targets)
    ref_grads = torch.autograd.grad((ref * coef).sum(), (hidden, weight, bias))
    got, ent = chunked_token_logprobs(hidden, weight, bias, targets, chunk_elements=chunk_elements, with_entropy=True)
    grads = torch.autograd.grad((got * coef).sum(), (hidden, weight, bias))
    assert torch.allclose(got, ref, atol=1e-12)
    assert torch.allclose(ent, O.entropy(F.linear(hidden, weight, bias)).detach(), atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_response_logprobs_through_a_real_llama_forward_match_its_logits(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # a left-padded row
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    cols = torch.tensor([5, 30, 20, 0, 10, 38])
    targets = ids[rows, cols + 1]

    full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    ref = O.token_logprobs(full[rows, cols], targets)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got, ent = response_logprobs(model, ids, mask, rows, cols, targets, chunk_elements=2 * vocab, with_entropy=True)
    got.sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(ent, O.entropy(full[rows, cols]).detach(), atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name], atol=1e-5), name
    assert "forward" not in vars(model.lm_head)  # the head is itself again
