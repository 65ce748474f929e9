"""Two-rank FSDP2 (gloo, CPU) PPO update == one single-process, unsharded update written out plainly.

The reference below uses plain transformers models, one forward per rollout (no padding, no micro-batches),
and the objective's formulas over the whole batch at once, then AdamW with gradient clipping; the learner
runs sharded over two ranks, with micro-batches small enough that the ranks get different numbers of them.
"""

from __future__ import annotations

import os
import pickle
import socket

import pytest
import torch
import torch.multiprocessing as mp

from helpers.rollouts import make_rollouts
from rlef.common.config import load_config

VOCAB = 97
OVERRIDES = ["learner.batch_rollouts=6", "learner.updates_per_batch=1", "learner.micro_batch_tokens=96",
             "learner.lr=1e-3", "learner.warmup_steps=0", "learner.max_grad_norm=0.5", "learner.advantage_norm=batch",
             "reward.kl_beta=0.3", "run.seed=3"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, model_dir: str, out: str, batch_bytes: bytes, extra: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from rlef.learner.parallel import full_state_dict, init_distributed
    from rlef.learner.ppo import PPOLearner

    _, _, device = init_distributed("gloo", "cpu")
    config = load_config(None, OVERRIDES + extra + [f"model.path={model_dir}"])
    learner = PPOLearner(config, device)
    # Perturb the policy away from the reference so the KL term is not zero, identically on every rank.
    with torch.no_grad():
        for p in learner.policy.parameters():
            local = p.to_local()
            local.add_(0.01 * torch.sin(local * 7.0 + 1.0))
    perturbed = full_state_dict(learner.policy)
    stats, updates = learner.train_batch(pickle.loads(batch_bytes))
    policy, value = full_state_dict(learner.policy), full_state_dict(learner.value)
    if rank == 0:
        torch.save({"perturbed": perturbed, "policy": policy, "value": value, "stats": stats, "updates": updates}, out)
    dist.destroy_process_group()


def reference_update(model_dir, perturbed, batch, config):
    from transformers import AutoModelForCausalLM

    from rlef.learner import models, objective as O
    from rlef.learner.batching import to_sequence

    cfg = config.learner
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.load_state_dict(perturbed)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vcfg = models.hf_config(model_dir, value_head=True)
    value = models.build(vcfg, value_head=True)
    head_std = cfg.value_head_init_std if cfg.value_head_init_std is not None else vcfg.hidden_size**-0.5
    gen = torch.Generator().manual_seed(config.run.seed)
    value_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("lm_head.")}
    value_state.update({"lm_head.weight": torch.randn(1, vcfg.hidden_size, generator=gen) * head_std,
                        "lm_head.bias": torch.zeros(1)})
    value.load_state_dict(value_state)
    seqs = [to_sequence(r) for r in batch]

    def score(model, seq):
        logits = model(input_ids=torch.from_numpy(seq.tokens)[None]).logits[0]
        pos = torch.from_numpy(seq.response_positions())
        return logits, torch.log_softmax(logits[pos - 1], -1).gather(-1, torch.from_numpy(seq.tokens)[pos][:, None])[:, 0]

    with torch.no_grad():
        old = [score(policy, s)[1] for s in seqs]
        rho = [score(reference, s)[1] for s in seqs]
        v_old = [value(input_ids=torch.from_numpy(s.tokens)[None]).logits[0, :, 0][torch.from_numpy(s.value_positions)] for s in seqs]
    G, A = [], []
    for s, lo, lr, vo in zip(seqs, old, rho, v_old):
        bounds = torch.cumsum(torch.from_numpy(s.response_lens), 0)
        kl = torch.stack([(lo[b - n:b] - lr[b - n:b]).mean() for b, n in zip(bounds, torch.from_numpy(s.response_lens))])
        R = torch.from_numpy(s.rewards).float() - config.reward.kl_beta * kl
        g = torch.flip(torch.cumsum(torch.flip(R, [0]), 0), [0])
        G.append(g)
        A.append(g - vo)
    flat = torch.cat(A)
    A = [(a - flat.mean()) / (flat.std(unbiased=False) + 1e-8) for a in A]
    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas)
    opt_v = torch.optim.AdamW(value.parameters(), lr=cfg.value_lr or cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas)
    pi_terms, v_terms, firsts = [], [], []
    for s, a, g, lo, vo in zip(seqs, A, G, old, v_old):
        _, logpi = score(policy, s)
        firsts.append(logpi.detach())
        a_tok = torch.repeat_interleave(a, torch.from_numpy(s.response_lens))
        ratio = O.importance_ratio(logpi, lo, torch.from_numpy(s.logprobs_b))
        pi_terms.append(O.policy_loss_terms(ratio, a_tok, cfg.clip_eps, cfg.dual_clip))
        V = value(input_ids=torch.from_numpy(s.tokens)[None]).logits[0, :, 0][torch.from_numpy(s.value_positions)]
        v_terms.append(O.value_loss_terms(V, vo, g, cfg.value_clip))
    (torch.cat(pi_terms).mean() + torch.cat(v_terms).mean()).backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    torch.nn.utils.clip_grad_norm_(value.parameters(), cfg.max_grad_norm)
    grads = {f"policy {n}": p.grad.clone() for n, p in policy.named_parameters()}
    grads.update({f"value {n}": p.grad.clone() for n, p in value.named_parameters()})
    opt_p.step()
    opt_v.step()
    stats = reference_stats(seqs, old, firsts, G, v_old, cfg.clip_eps)
    return policy.state_dict(), value.state_dict(), grads, stats


def reference_stats(seqs, old, new, G, v_old, clip_eps) -> dict[str, float]:
    """The logged diagnostics over the whole batch, written out from their definitions (float64)."""
    lo = torch.cat(old).double()
    lp = torch.cat(new).double()
    lb = torch.cat([torch.from_numpy(s.logprobs_b) for s in seqs]).double()
    w = torch.minimum(torch.exp(lp - lb), torch.ones_like(lp))
    ratio = torch.exp(lp - lo) * w
    g, v = torch.cat(G).double(), torch.cat(v_old).double()
    r_old_b = torch.exp(lo - lb)
    r_new_old = torch.exp(lp - lo)
    return {
        "mismatch_kl": (r_old_b - 1 - torch.log(r_old_b)).mean().item(),
        "explained_variance": (1 - (g - v).var(unbiased=False) / g.var(unbiased=False)).item(),
        "truncation_fraction": (w < torch.exp(lp - lb)).double().mean().item(),
        "clip_fraction": ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).double().mean().item(),
        "approx_kl": (r_new_old - 1 - torch.log(r_new_old)).mean().item(),
        "tokens": len(lp),
    }


def assert_same_update(got: torch.Tensor, expected: torch.Tensor, grad: torch.Tensor | None, label: str, lr: float) -> None:
    """Equal within fp32 tolerance wherever the gradient stands above float32 noise.

    AdamW's first step moves each weight by about lr * sign(g): an element whose gradient is a cancellation
    at rounding level (|g| below 1e-5 of the tensor's largest) can flip sign with the summation order (thread
    count, sharding), so there we only require a move no larger than one step, and such elements must be rare.
    """
    if grad is None:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-6, msg=label)
        return
    # Exactly-zero gradients (embedding rows of unseen tokens) are no noise: both sides only decay them.
    noise = (grad != 0) & (grad.abs() <= 1e-5 * grad.abs().max())
    assert noise.float().mean().item() < 0.1, f"{label}: too many near-zero gradients to compare"
    torch.testing.assert_close(got[~noise], expected[~noise], rtol=1e-4, atol=2e-6, msg=label)
    if noise.any():
        assert (got[noise] - expected[noise]).abs().max().item() <= 2.5 * lr, label


def run_learner(model_dir, tmp_path, batch, world: int, extra: list[str]) -> dict:
    out = tmp_path / f"result-{world}-{len(extra)}.pt"
    mp.spawn(_rank_main, args=(world, _port(), str(model_dir), str(out), pickle.dumps(batch), extra), nprocs=world, join=True)
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["learner.activation_checkpointing=true"],
                                   ["learner.value_lr=4e-3", "learner.value_head_init_std=0.003"]],
                         ids=["plain", "activation-checkpointing", "value-lr-and-head-init"])
def test_two_rank_fsdp_update_matches_unsharded(learner_model_dir, tmp_path, extra):
    batch = make_rollouts(6, VOCAB, seed=5, max_prompt=20, max_response=12)
    result = run_learner(learner_model_dir, tmp_path, batch, 2, extra)
    config = load_config(None, OVERRIDES + extra + [f"model.path={learner_model_dir}"])
    ref_policy, ref_value, grads, ref_stats = reference_update(str(learner_model_dir), result["perturbed"], batch, config)
    assert result["stats"]["kl"] != 0.0
    # The logged diagnostics (objective.py's functions, summed per rank and all-reduced) == whole-batch values.
    logged = {**result["stats"], **result["updates"][0]}
    assert ref_stats["mismatch_kl"] > 0.1  # random behaviour log-probs: far from the learner's
    for key in ("mismatch_kl", "explained_variance", "approx_kl"):
        assert logged[key] == pytest.approx(ref_stats[key], rel=1e-4, abs=1e-6), key
    # Token counts: float32 rounding of the two computations may move a token sitting on a boundary.
    for key in ("truncation_fraction", "clip_fraction"):
        assert abs(logged[key] - ref_stats[key]) <= 1.0 / ref_stats["tokens"] + 1e-12, key
    moved = 0
    for name, expected in ref_policy.items():
        got = result["policy"][name]
        moved += int(not torch.allclose(got, result["perturbed"][name]))
        assert_same_update(got, expected, grads.get(f"policy {name}"), f"policy {name}", config.learner.lr)
    assert moved > 0
    for name, expected in ref_value.items():
        assert_same_update(result["value"][name], expected, grads.get(f"value {name}"), f"value {name}",
                           config.learner.value_lr or config.learner.lr)


@pytest.mark.slow
def test_mixed_precision_update_stays_close_to_fp32(learner_model_dir, tmp_path):
    """bf16 compute with fp32 master weights and fp32 gradient reduction: near, not equal, to fp32."""
    batch = make_rollouts(6, VOCAB, seed=6, max_prompt=20, max_response=12)
    fp32 = run_learner(learner_model_dir, tmp_path, batch, 1, [])
    mixed = run_learner(learner_model_dir, tmp_path, batch, 1, ["learner.mixed_precision=true"])
    diffs = [(mixed["policy"][k] - fp32["policy"][k]).abs().max().item() for k in fp32["policy"]]
    assert all(mixed["policy"][k].dtype == torch.float32 for k in mixed["policy"])
    assert 0 < max(diffs) < 0.01  # lr 1e-3: one step moves a weight by ~1e-3; bf16 changes it a little
    assert abs(mixed["updates"][0]["loss/policy"] - fp32["updates"][0]["loss/policy"]) < 0.05
