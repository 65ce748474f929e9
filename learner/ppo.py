"""One batch of RLEF PPO on FSDP2-sharded models: re-score, compute advantages, U optimizer updates.

Work split (identical on every rank, so it is deterministic and needs no coordination beyond collectives):
update u trains on rollouts ``batch[u*B/U : (u+1)*B/U]``, of which rank r takes every world-th one starting
at r. Every loss is a SUM over the rank's tokens (turns) divided by the GLOBAL count of the update and
multiplied by the world size, because FSDP averages gradients over ranks: the result equals the unsharded
mean over all of the update's tokens (turns) exactly, whatever the split.

FSDP2 runs collectives in every forward and backward, so every rank must run the same number of micro-batch
passes: a rank with less data pads with a two-token dummy micro-batch whose loss is multiplied by zero.

Re-scoring: before the U updates, the learner's own forward passes give log pi_old (the current policy),
log rho (the frozen reference) and V_old on every response token / turn. KL_t uses pi_old, so the KL penalty,
returns and advantages are fixed for the whole batch (see rlef.learner.objective).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from rlef.common.config import RlefConfig
from rlef.common.protocol.messages import Rollout
from rlef.learner import models, objective as O
from rlef.learner.batching import Layout, MicroBatch, Sequence, collate, dummy_micro_batch, layout, plan_micro_batches, to_sequence
from rlef.learner.logprobs import response_logprobs
from rlef.learner.parallel import materialize, parallelize

log = logging.getLogger(__name__)


def warmup_factor(warmup_steps: int):
    """Linear warm-up to the full learning rate over ``warmup_steps`` updates, then constant (paper: 50)."""
    return lambda step: 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


@dataclass
class Scored:
    """A rank's share of a batch after re-scoring: everything the U updates need, fixed for the batch."""

    sequences: list[Sequence]
    lay: Layout
    update_of: torch.Tensor          # long [E]: which update each local rollout belongs to
    logpi_old: torch.Tensor          # [N]
    logrho: torch.Tensor             # [N]
    V_old: torch.Tensor              # [E, K]
    kl: torch.Tensor                 # [E, K]
    G: torch.Tensor                  # [E, K]
    A: torch.Tensor                  # [E, K] (normalised per learner.advantage_norm)
    stats: dict[str, float] = field(default_factory=dict)


class PPOLearner:
    """Policy, value and reference models with their optimizers; ``train_batch`` does one whole batch."""

    def __init__(self, config: RlefConfig, device: torch.device, *, full_states: tuple[dict, dict] | None = None):
        self.config = config
        self.cfg = config.learner
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        path = config.model.path
        pcfg, vcfg = models.hf_config(path), models.hf_config(path, value_head=True)
        self.vocab_size = pcfg.vocab_size
        self.pad_id = pcfg.pad_token_id if isinstance(getattr(pcfg, "pad_token_id", None), int) else 0
        if full_states is None and self.rank == 0:
            policy_state = models.load_policy_state_dict(path)
            full_states = (policy_state, models.value_state_dict(policy_state, vcfg.hidden_size, config.run.seed,
                                                                 init_std=self.cfg.value_head_init_std))
        policy_state, value_state = full_states if self.rank == 0 else ({}, {})
        self.policy = self._make(pcfg, policy_state, value_head=False, trainable=True)
        self.reference = self._make(pcfg, policy_state, value_head=False, trainable=False)
        self.value = self._make(vcfg, value_state, value_head=True, trainable=True)
        del policy_state, value_state
        self.optimizers = {"policy": self._adamw(self.policy, self.cfg.lr),
                           "value": self._adamw(self.value, self.cfg.value_lr or self.cfg.lr)}
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor(self.cfg.warmup_steps))
                           for name, opt in self.optimizers.items()}
        self.step = 0

    def _make(self, hf_cfg, state: dict, *, value_head: bool, trainable: bool) -> nn.Module:
        with torch.device("meta"):
            model = models.build(hf_cfg, value_head=value_head)
        parallelize(model, mixed_precision=self.cfg.mixed_precision,
                    activation_checkpointing=self.cfg.activation_checkpointing and trainable)
        materialize(model, state if self.rank == 0 else None, self.device)
        model.requires_grad_(trainable)
        model.train(trainable)
        return model

    def _adamw(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=self.cfg.weight_decay,
                                 betas=tuple(self.cfg.adam_betas), eps=1e-8)

    # ------------------------------------------------------------ collectives

    def _all_reduce(self, values: list[float] | torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float64).to(self.device)
        if self.world > 1:
            dist.all_reduce(t, op=op)
        return t.cpu()

    def _micro_batches(self, sequences: list[Sequence], lay: Layout) -> list[MicroBatch]:
        groups = plan_micro_batches([len(s.tokens) for s in sequences], self.cfg.micro_batch_tokens)
        batches = [collate(sequences, g, lay, self.pad_id) for g in groups]
        target = int(self._all_reduce([len(batches)], dist.ReduceOp.MAX).item())
        return batches + [dummy_micro_batch(self.pad_id) for _ in range(target - len(batches))]

    # ------------------------------------------------------------ forward passes

    def _logits(self, model: nn.Module, mb: MicroBatch) -> torch.Tensor:
        out = model(input_ids=mb.input_ids.to(self.device), attention_mask=mb.attention_mask.to(self.device), use_cache=False)
        return out.logits

    def _token_logprobs(self, logits: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        picked = logits[mb.resp_rows.to(self.device), mb.resp_cols.to(self.device)]
        return O.token_logprobs(picked, mb.resp_targets.to(self.device)), picked

    def _response_logprobs(self, model: nn.Module, mb: MicroBatch, with_entropy: bool = False):
        """(log-prob of every response token, its entropy or None) without the [B, T, vocab] logits: the head
        runs on the response positions only, in chunks (rlef.learner.logprobs; same numbers)."""
        dev = lambda t: t.to(self.device)  # noqa: E731
        return response_logprobs(model, dev(mb.input_ids), dev(mb.attention_mask), dev(mb.resp_rows),
                                 dev(mb.resp_cols), dev(mb.resp_targets), with_entropy=with_entropy)

    def _values(self, model: nn.Module, mb: MicroBatch) -> torch.Tensor:
        out = self._logits(model, mb)[..., 0].float()
        return out[mb.value_rows.to(self.device), mb.value_cols.to(self.device)], out

    # ------------------------------------------------------------ the batch

    def share(self, batch: list[Rollout]) -> tuple[list[Sequence], torch.Tensor]:
        """This rank's rollouts of the batch (update after update) and the update index of each."""
        U = self.cfg.updates_per_batch
        per = len(batch) // U
        seqs, update_of = [], []
        for u in range(U):
            mine = batch[u * per : (u + 1) * per][self.rank :: self.world]
            seqs += [to_sequence(r) for r in mine]
            update_of += [u] * len(mine)
        return seqs, torch.tensor(update_of, dtype=torch.long)

    @torch.no_grad()
    def rescore(self, batch: list[Rollout]) -> Scored:
        seqs, update_of = self.share(batch)
        K = int(self._all_reduce([max((s.num_turns for s in seqs), default=1)], dist.ReduceOp.MAX).item())
        lay = layout(seqs, K)
        N = len(lay.token_turn)
        logpi_old, logrho = torch.zeros(N), torch.zeros(N)
        V_old = torch.zeros(lay.num_turns)
        for mb in self._micro_batches(seqs, lay):
            logpi_old[mb.resp_index] = self._response_logprobs(self.policy, mb)[0].cpu().float()
            logrho[mb.resp_index] = self._response_logprobs(self.reference, mb)[0].cpu().float()
            V_old[mb.value_index] = self._values(self.value, mb)[0].cpu()
        E = len(seqs)
        V_old = V_old.reshape(E, K).double()
        kl = O.turn_kl(logpi_old.double(), logrho.double(), lay.token_turn, lay.num_turns).reshape(E, K)
        R = O.penalized_rewards(lay.rewards, kl, self.config.reward.kl_beta, lay.turn_mask)
        G = O.monte_carlo_returns(R, lay.turn_mask)
        A = self._normalize(O.turn_advantages(G, V_old, lay.turn_mask), lay.turn_mask, update_of)
        stats = self._batch_stats(lay, kl, G, V_old, logpi_old, logrho, lay.logprobs_b)
        return Scored(seqs, lay, update_of, logpi_old, logrho, V_old, kl, G, A, stats)

    def _normalize(self, A: torch.Tensor, mask: torch.Tensor, update_of: torch.Tensor) -> torch.Tensor:
        scope = self.cfg.advantage_norm
        if scope == "none":
            return A
        if scope == "batch":
            return O.normalize_advantages(A, mask, *self._all_reduce(list(O.masked_moments(A, mask))))
        out = A.clone()
        for u in range(self.cfg.updates_per_batch):
            rows = (update_of == u).unsqueeze(-1) & mask
            moments = self._all_reduce(list(O.masked_moments(A, rows)))
            out = torch.where(rows, O.normalize_advantages(A, rows, *moments), out)
        return out

    def _batch_stats(self, lay: Layout, kl, G, V, logpi_old, logrho, logpi_b) -> dict[str, float]:
        """Batch statistics of the re-scoring, as sums all-reduced over ranks and divided by global counts."""
        m = lay.turn_mask
        d = G - V
        s = self._all_reduce([
            kl[m].sum(), m.sum(), G[m].sum(), (G[m] ** 2).sum(), d[m].sum(), (d[m] ** 2).sum(),
            (logpi_old - logrho).sum(), len(logpi_old),
            O.mismatch_kl_terms(logpi_old.double(), logpi_b.double()).sum(),
        ]).tolist()
        n = max(s[1], 1.0)
        n_tok = max(s[7], 1.0)
        return {
            "kl": s[0] / n,
            "kl/token": s[6] / n_tok,
            "return/mean": s[2] / n,
            "explained_variance": O.explained_variance_from_moments(s[2], s[3], s[4], s[5], s[1]),
            "mismatch_kl": s[8] / n_tok,
            "turns": s[1],
            "tokens/response": s[7],
        }

    def update(self, sc: Scored, u: int) -> dict[str, float]:
        """One optimizer update (policy and value) on this rank's rollouts of update ``u``."""
        idx = torch.nonzero(sc.update_of == u).flatten().tolist()
        seqs = [sc.sequences[i] for i in idx]
        sub = layout(seqs, sc.lay.K)
        # Map the sub-layout back to the scored (whole-share) arrays.
        tok_map = torch.cat([torch.arange(sc.lay.token_offsets[i], sc.lay.token_offsets[i] + int(sc.sequences[i].response_lens.sum()))
                             for i in idx]) if idx else torch.zeros(0, dtype=torch.long)
        turn_map = torch.cat([i * sc.lay.K + torch.arange(sc.lay.K) for i in idx]) if idx else torch.zeros(0, dtype=torch.long)
        A_flat, G_flat, V_old_flat = sc.A.reshape(-1)[turn_map], sc.G.reshape(-1)[turn_map], sc.V_old.reshape(-1)[turn_map]
        logpi_old, logpi_b = sc.logpi_old[tok_map], sub.logprobs_b
        n_tok, n_turn = self._all_reduce([len(sub.token_turn), int(sub.turn_mask.sum())]).tolist()
        scale_tok, scale_turn = self.world / max(n_tok, 1.0), self.world / max(n_turn, 1.0)
        acc = torch.zeros(8, dtype=torch.float64)
        t0 = time.perf_counter()
        for mb in self._micro_batches(seqs, sub):
            if len(mb.resp_index) == 0:  # dummy: run the collectives, contribute nothing
                logits = self._logits(self.policy, mb)
                V, vout = self._values(self.value, mb)
                loss = logits.sum() * 0.0 + vout.sum() * 0.0
                loss.backward()
                continue
            logpi, token_entropy = self._response_logprobs(self.policy, mb, with_entropy=True)
            V, vout = self._values(self.value, mb)
            dev = lambda t: t.to(self.device)  # noqa: E731
            ri, vi = mb.resp_index, mb.value_index
            A_tok = dev(A_flat[sub.token_turn[ri]].float())
            ratio = O.importance_ratio(logpi, dev(logpi_old[ri]), dev(logpi_b[ri]))
            pi_terms = O.policy_loss_terms(ratio, A_tok, self.cfg.clip_eps, self.cfg.dual_clip)
            v_terms = O.value_loss_terms(V, dev(V_old_flat[vi].float()), dev(G_flat[vi].float()), self.cfg.value_clip)
            (pi_terms.sum() * scale_tok + v_terms.sum() * scale_turn).backward()
            with torch.no_grad():
                acc += torch.tensor([
                    pi_terms.sum().item(), v_terms.sum().item(),
                    O.clip_fraction_terms(ratio.detach(), self.cfg.clip_eps).sum().item(),
                    O.approx_kl_terms(logpi.detach(), dev(logpi_old[ri])).sum().item(),
                    token_entropy.sum().item(),
                    float(mb.num_tokens), 0.0,
                    O.truncation_terms(logpi.detach(), dev(logpi_b[ri])).sum().item(),
                ], dtype=torch.float64)
        grad_norms = {name: self._clip(model) for name, model in (("policy", self.policy), ("value", self.value))}
        for name in self.optimizers:
            self.optimizers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
            self.schedulers[name].step()
        self.step += 1
        s = self._all_reduce(acc).tolist()
        return {
            "loss/policy": s[0] / max(n_tok, 1.0),
            "loss/value": s[1] / max(n_turn, 1.0),
            "loss/total": s[0] / max(n_tok, 1.0) + s[1] / max(n_turn, 1.0),
            "clip_fraction": s[2] / max(n_tok, 1.0),
            "approx_kl": s[3] / max(n_tok, 1.0),
            "truncation_fraction": s[7] / max(n_tok, 1.0),
            "entropy": s[4] / max(n_tok, 1.0),
            "grad_norm": grad_norms["policy"],
            "grad_norm/value": grad_norms["value"],
            "tokens": s[5],
            "seconds": time.perf_counter() - t0,
            "lr": self.schedulers["policy"].get_last_lr()[0],
        }

    def _clip(self, model: nn.Module) -> float:
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def train_batch(self, batch: list[Rollout]) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Re-score then run the U updates; returns (batch statistics, per-update statistics)."""
        scored = self.rescore(batch)
        return scored.stats, [self.update(scored, u) for u in range(self.cfg.updates_per_batch)]
