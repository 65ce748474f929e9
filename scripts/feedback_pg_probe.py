"""Usage: python scripts/feedback_pg_probe.py MODEL_DIR TASKS_DIR STEPS exact|sample LR [BATCH] [--actual-conventions]

How easily can policy gradient teach a warm start to copy the feedback's convention at turn 2?
Turn-2 contexts of hidden train problems (wrong turn 1, feedback showing `want`), the 8 candidate programs
scored exactly; gradient ascent on the expected reward p8(want) (exact) or REINFORCE with one sample per
context (sample). Reports p(want) on held-out (test split) contexts every few steps.

By default the convention the feedback shows (`want`) is drawn uniformly over all 8 for every problem: no
"usual convention of this operation" shortcut exists, only reading the feedback helps. With
--actual-conventions each problem's own convention is used, as in real training: the train split's
operation/convention pairs then reward memorising which conventions an operation has (docs/results-history.md).
No sandbox, no system: the model and the exact candidates only."""
import dataclasses
import random
import sys
import time

import torch
from transformers import AutoTokenizer, AutoModelForCausalLM
from rlef.common.data import feedback_tasks as T
from rlef.common.text import chat
from rlef.common.data.loaders import load_problems
from rlef.common.text.prompts import render_first_prompt
from rlef.common.models.warm_start import _wrong_answer_feedback, response_text
from rlef.common.protocol.messages import TestCase
ACTUAL = '--actual-conventions' in sys.argv
argv = [a for a in sys.argv if a != '--actual-conventions']
model_dir, tasks, steps, mode, lr = argv[1], argv[2], int(argv[3]), argv[4], float(argv[5])
B = int(argv[6]) if len(argv) > 6 else 8
torch.set_num_threads(1); rng = random.Random(0); torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir); model = AutoModelForCausalLM.from_pretrained(model_dir)
F = list(T.FORMATS)
def contexts(split):
    out = []
    for p in load_problems("codecontests", tasks, split):
        if not p.problem_id.endswith("hidden"): continue
        op = T.OPS_BY_NAME[T.parse_problem_name(p.problem_id)["op"]]
        first = chat.first_prompt_ids(tok, render_first_prompt(p, "codecontests"))
        wi = F.index(T.FORMATS_BY_NAME[T.parse_problem_name(p.problem_id)['format']]) if ACTUAL else rng.randrange(len(F))
        want = F[wi]
        got = F[(wi + 1 + rng.randrange(len(F) - 1)) % len(F)]
        q = dataclasses.replace(p, public_tests=[TestCase(input=t.input, output=want.render(op.apply(*map(int, t.input.split()))) + "\n") for t in p.public_tests])
        ctx = first + chat.response_ids(tok, response_text(T.program(op, got))) + chat.next_prompt_ids(tok, _wrong_answer_feedback(q, got, op, 256, "codecontests"))
        cands = [chat.response_ids(tok, response_text(T.program(op, f))) for f in F]
        out.append((ctx, cands, wi))
    return out
train, test = contexts("train"), contexts("test")[:24]
print(len(train), "train contexts", len(test), "test contexts", flush=True)
def logp8(ctx, cands):
    seqs = [ctx + c for c in cands]; L = max(map(len, seqs))
    x = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    lp = torch.log_softmax(model(x).logits[:, :-1], -1).gather(2, x[:, 1:, None])[..., 0]
    mask = torch.zeros_like(lp)
    for i, c in enumerate(cands): mask[i, len(ctx) - 1:len(ctx) - 1 + len(c)] = 1
    return torch.log_softmax((lp * mask).sum(1), 0)
def evaluate():
    with torch.no_grad():
        return sum(logp8(c, k)[w].exp().item() for c, k, w in test) / len(test)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
t0 = time.time(); print(f"step 0 p(want) held-out {evaluate():.3f}", flush=True)
for step in range(1, steps + 1):
    model.train(); opt.zero_grad(); batch = rng.sample(train, B)
    for ctx, cands, wi in batch:
        lp = logp8(ctx, cands)
        if mode == "exact":
            loss = -lp[wi].exp() / len(batch)
        else:
            f = torch.multinomial(lp.exp().detach(), 1).item(); r = 1.0 if f == wi else -1.0
            b = 2 * lp[wi].exp().item() - 1  # the exact expected reward as baseline (a perfect value function)
            loss = -(r - b) * lp[f] / len(batch)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); model.eval()
    if step % 10 == 0: print(f"step {step} p(want) held-out {evaluate():.3f} ({time.time()-t0:.0f}s)", flush=True)
