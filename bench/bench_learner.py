"""Learner benchmark: one PPO update vs a plain forward + backward of the same models on the same tokens.

    .venv/bin/python bench/bench_learner.py [--hidden 256 --layers 4 --vocab 2048 --rollouts 32 --repeats 3]

Both sides run in the same process on the same FSDP2-wrapped models (one gloo rank) and the same
micro-batches. The baseline is what any trainer of a policy and a value model pays: forward + backward of
the policy (summed response log-probs) and of the value model (summed values at the turns' last prompt
tokens). The PPO update adds the objective (ratio, clipping, value clipping, advantage gathers), the
statistics, gradient clipping and the AdamW steps. Re-scoring (three no-grad forwards per batch, once per U
updates) is reported on its own line. Target: update / baseline <= 1.3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_model(path: Path, hidden: int, layers: int, vocab: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 128, 1),
                      max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--micro-batch-tokens", type=int, default=2048)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from helpers.rollouts import make_rollouts
    from rlef.common.config import load_config
    from rlef.learner.parallel import init_distributed
    from rlef.learner.ppo import PPOLearner

    tmp = Path(tempfile.mkdtemp(prefix="bench-learner-"))
    build_model(tmp / "model", args.hidden, args.layers, args.vocab)
    config = load_config(None, [f"model.path={tmp / 'model'}", f"learner.batch_rollouts={args.rollouts}",
                                "learner.updates_per_batch=1", f"learner.micro_batch_tokens={args.micro_batch_tokens}",
                                "learner.lr=1e-5", "learner.warmup_steps=0"])
    _, _, device = init_distributed("gloo", "cpu")
    learner = PPOLearner(config, device)
    batch = make_rollouts(args.rollouts, args.vocab, seed=1, max_prompt=160, max_response=96)
    scored = learner.rescore(batch)
    tokens = sum(len(s.tokens) for s in scored.sequences)

    def plain() -> None:
        for mb in learner._micro_batches(scored.sequences, scored.lay):
            logpi, _ = learner._token_logprobs(learner._logits(learner.policy, mb), mb)
            V, _ = learner._values(learner.value, mb)
            (logpi.sum() + V.sum()).backward()
        for model in (learner.policy, learner.value):
            model.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    timed(plain)
    timed(lambda: learner.update(scored, 0))  # warm-up both paths
    base, ppo, rescore = [], [], []
    for _ in range(args.repeats):
        base.append(timed(plain))
        ppo.append(timed(lambda: learner.update(scored, 0)))
        rescore.append(timed(lambda: learner.rescore(batch)))
    print("samples (s): baseline", [round(x, 3) for x in base], "ppo", [round(x, 3) for x in ppo])
    # The machine is shared: the minimum of interleaved repeats is the least disturbed measurement of each.
    b, p, r = min(base), min(ppo), min(rescore)
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; "
          f"{args.rollouts} rollouts, {tokens} tokens; best of {args.repeats} interleaved repeats")
    print(f"plain forward+backward (policy + value): {b:.3f} s  ({tokens / b:.0f} tokens/s)  [baseline]")
    print(f"PPO update (objective + clip + AdamW):   {p:.3f} s  ratio {p / b:.2f}x  (target <= 1.3x)")
    print(f"re-scoring (pi_old, rho, V_old, no grad): {r:.3f} s  ratio {r / b:.2f}x  (once per batch of U updates)")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
