"""Learner benchmark: one PPO update vs a plain forward + backward of the same models on the same tokens.

    .venv/bin/python bench/bench_learner.py [--hidden 256 --layers 4 --vocab 2048 --rollouts 32 --repeats 3]
    .venv/bin/python bench/bench_learner.py --memory [--vocab 128256]   # peak memory, full vs chunked log-probs

Both sides run in the same process on the same FSDP2-wrapped models (one gloo rank) and the same
micro-batches. The baseline is what any trainer of a policy and a value model pays: forward + backward of
the policy (summed response log-probs) and of the value model (summed values at the turns' last prompt
tokens). The PPO update adds the objective (ratio, clipping, value clipping, advantage gathers), the
statistics, gradient clipping and the AdamW steps. Re-scoring (three no-grad forwards per batch, once per U
updates) is reported on its own line. Target: update / baseline <= 1.3.

``--memory``: peak resident memory of one re-scoring + one PPO update (one process per variant, the kernel's
peak-RSS counter reset just before), with the response log-probs computed from full-vocabulary logits (the
code before rlef.learner.logprobs) and chunked (now), at the tiny model's dimensions (hidden 128, 2 layers,
MLP 384, 4 heads, 2 KV heads) and a 128k vocabulary by default, and chunked again at ``--small-vocab``
(does the per-micro-batch peak depend on the vocabulary?). A warm-up update runs first, so gradients and
AdamW states (which scale with the vocabulary through the embeddings and the head, once per model, not per
micro-batch) are part of the memory before, printed apart.
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


def build_model(path: Path, hidden: int, layers: int, vocab: int, intermediate: int | None = None,
                heads: int | None = None, kv_heads: int | None = None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 4,
                      num_hidden_layers=layers, num_attention_heads=heads or max(hidden // 64, 1),
                      num_key_value_heads=kv_heads or max(hidden // 128, 1),
                      max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(path)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args) -> None:
    """One variant in this process: print peak RSS growth of rescore + update over the RSS before them."""
    import gc
    import json

    from helpers.rollouts import make_rollouts
    from rlef.common.config import load_config
    from rlef.learner import objective as O
    from rlef.learner.parallel import init_distributed
    from rlef.learner.ppo import PPOLearner

    config = load_config(None, [f"model.path={args.model_dir}", f"learner.batch_rollouts={args.rollouts}",
                                "learner.updates_per_batch=1", f"learner.micro_batch_tokens={args.micro_batch_tokens}",
                                "learner.lr=1e-5", "learner.warmup_steps=0"])
    _, _, device = init_distributed("gloo", "cpu")
    learner = PPOLearner(config, device)
    if args.memory_child == "full":  # the code before rlef.learner.logprobs: logits of every position

        def full(model, mb, with_entropy=False):
            logp, picked = learner._token_logprobs(learner._logits(model, mb), mb)
            return logp, (O.entropy(picked.detach()) if with_entropy else None)

        learner._response_logprobs = full
    batch = make_rollouts(args.rollouts, args.vocab, seed=1, max_prompt=160, max_response=96)
    learner.update(learner.rescore(batch), 0)  # warm-up: gradients and AdamW states exist from here on
    gc.collect()
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    t0 = time.perf_counter()
    scored = learner.rescore(batch)
    learner.update(scored, 0)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    tokens = sum(len(s.tokens) for s in scored.sequences)
    print(json.dumps({"variant": args.memory_child, "before_mib": before / 1024, "peak_growth_mib": (peak - before) / 1024,
                      "seconds": seconds, "tokens": tokens}), flush=True)
    torch.distributed.destroy_process_group()


def memory(args) -> None:
    """Peak growth of full vs chunked log-probs at each micro-batch size of ``--memory-tokens`` (and chunked
    at the small vocabulary at the largest size): what grows with the micro-batch is the per-micro-batch
    memory; what stays is per-model state (gradients, FSDP's unsharded embedding and head)."""
    import json
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="bench-learner-mem-"))
    build_model(tmp / "model", args.hidden, args.layers, args.vocab, args.intermediate, args.heads, args.kv_heads)
    build_model(tmp / "small", args.hidden, args.layers, args.small_vocab, args.intermediate, args.heads, args.kv_heads)
    sizes = [int(x) for x in args.memory_tokens.split(",")]
    runs = [(v, "model", args.vocab, n) for n in sizes for v in ("full", "chunked")]
    runs.append(("chunked", "small", args.small_vocab, sizes[-1]))
    out = {}
    for variant, model_dir, vocab, tokens in runs:
        cmd = [sys.executable, __file__, "--memory-child", variant, "--model-dir", str(tmp / model_dir),
               f"--vocab={vocab}", f"--rollouts={args.rollouts}", f"--micro-batch-tokens={tokens}"]
        env = dict(os.environ, OMP_NUM_THREADS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                   RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        out[(variant, vocab, tokens)] = r = json.loads(line)
        print(f"vocab {vocab:>6}, micro-batches of {tokens:>5} tokens, {variant:>7} log-probs: resident before "
              f"{r['before_mib']:6.0f} MiB, peak growth during rescore + update {r['peak_growth_mib']:6.0f} MiB, "
              f"{r['seconds']:.1f} s", flush=True)
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, MLP {args.intermediate}; {args.rollouts} rollouts, "
          f"{r['tokens']} tokens; load average {os.getloadavg()[0]:.1f}")
    lo, hi = sizes[0], sizes[-1]
    for variant in ("full", "chunked"):
        a, b = out[(variant, args.vocab, lo)], out[(variant, args.vocab, hi)]
        print(f"{variant}: peak growth at {hi} / at {lo} tokens per micro-batch: "
              f"{b['peak_growth_mib']:.0f} / {a['peak_growth_mib']:.0f} MiB "
              f"(+{(b['peak_growth_mib'] - a['peak_growth_mib']) / (hi - lo) * 1024:.0f} MiB per 1024 tokens)")
    f, c = out[("full", args.vocab, hi)], out[("chunked", args.vocab, hi)]
    print(f"chunked / full at {hi} tokens: peak growth {c['peak_growth_mib'] / f['peak_growth_mib']:.2f}, "
          f"time {c['seconds'] / f['seconds']:.2f}x")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--micro-batch-tokens", type=int, default=2048)
    ap.add_argument("--memory", action="store_true", help="peak memory, full-vocabulary vs chunked log-probs")
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--small-vocab", type=int, default=2048, help="--memory: the vocabulary of the comparison run")
    ap.add_argument("--memory-tokens", default="1024,4096", help="--memory: micro-batch sizes (tokens) to compare")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--memory-child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        memory_child(args)
        return 0
    if args.memory:
        if "--vocab" not in " ".join(sys.argv):
            args.vocab = 128256  # Llama 3.1's vocabulary
        if "--hidden" not in " ".join(sys.argv):  # the tiny model's other dimensions
            args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads = 128, 2, 384, 4, 2
        memory(args)
        return 0

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
