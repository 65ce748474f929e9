"""Usage: python scripts/feedback_probe.py MODEL_DIR TASKS_DIR N_PROBLEMS

How much a model's turn-2 format choice depends on the feedback: for each hidden problem, the feedback's
expected output is written in each of the 8 formats in turn (turn 1 wrote another one); the model's exact
distribution over the 8 candidate programs is scored. Reports p(the format the feedback shows) and the mutual
information I(feedback format; written format) in nats (0 = ignores the feedback; log 8 = 2.08 = reads it perfectly)."""
import dataclasses
import random
import sys

import torch
from transformers import AutoTokenizer, AutoModelForCausalLM
from rlef.common.data import feedback_tasks as T
from rlef.common.text import chat
from rlef.common.data.loaders import load_problems
from rlef.common.text.prompts import render_first_prompt
from rlef.common.models.warm_start import _wrong_answer_feedback, response_text
from rlef.common.protocol.messages import TestCase
model_dir, tasks, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1); random.seed(0)
tok = AutoTokenizer.from_pretrained(model_dir); model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
probs = [p for p in load_problems("codecontests", tasks, "train") if p.problem_id.endswith("hidden")][:n]
F = list(T.FORMATS)
mis, pcs = [], []
for p in probs:
    op = T.OPS_BY_NAME[T.parse_problem_name(p.problem_id)["op"]]
    first = chat.first_prompt_ids(tok, render_first_prompt(p, "codecontests"))
    dists = []
    for wi, want in enumerate(F):
        got = F[(wi + 1 + random.randrange(len(F) - 1)) % len(F)]
        q = dataclasses.replace(p, public_tests=[TestCase(input=t.input, output=want.render(op.apply(*map(int, t.input.split()))) + "\n") for t in p.public_tests])
        ctx = first + chat.response_ids(tok, response_text(T.program(op, got))) + chat.next_prompt_ids(tok, _wrong_answer_feedback(q, got, op, 256, "codecontests"))
        lps = []
        for f in F:
            x = torch.tensor([ctx + chat.response_ids(tok, response_text(T.program(op, f)))])
            with torch.no_grad():
                lps.append(torch.log_softmax(model(x).logits[0, len(ctx)-1:-1], -1).gather(1, x[0, len(ctx):, None]).sum().item())
        dists.append(torch.tensor(lps).softmax(0))
    D = torch.stack(dists)  # [want, written]
    marg = D.mean(0)
    mis.append((D * (D.log() - marg.log())).sum(1).mean().item()); pcs.append(D.diagonal().mean().item())
print(f"{model_dir}: p(feedback's format) {sum(pcs)/len(pcs):.3f} (chance 0.125); I(feedback; choice) {sum(mis)/len(mis):.3f} nats; per problem {' '.join(f'{m:.2f}' for m in mis)}")
