"""The warm start of the learning proof (``rlef make-warm-start DIR --tasks TASKS``): the analogue of an
instruct model before RLEF.

It builds the tiny Llama (rlef.common.models.tiny_model: same architecture, a tokenizer trained on the same local
text plus the feedback-task family) and trains it with supervised multi-turn traces of the TRAIN split of a
task directory made by ``rlef data make-feedback-tasks`` (rlef.common.data.feedback_tasks):

- a problem that shows its output convention gets one correct turn: the model learns to read the statement,
  write a valid program for the operation and copy the convention from the statement's example;
- a problem that hides it gets up to ``max_turns`` turns whose conventions are drawn uniformly at random,
  each turn independently of everything before it, with the REAL feedback in between (rendered by
  rlef.common.text.prompts exactly as the actor renders it), stopping where the drawn convention is right, as an
  episode stops when the public tests pass. So the model learns the multi-turn format and to try again, but
  NOT to use what the feedback says: its later turns are guesses (1 in 8 per turn).

What RLEF then has to teach is exactly the paper's claim: read the feedback and act on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from rlef.common.errors import RlefError

log = logging.getLogger(__name__)

MARKER = "rlef_warm_start.json"
BUILD_VERSION = 1
DEFAULT_STEPS = 900
DEFAULT_BATCH = 16
DEFAULT_LR = 3e-3


class WarmStartError(RlefError):
    """The warm start cannot be built or is missing (the message says how to build it)."""


def response_text(code: str) -> str:
    """An assistant turn: the program in a python fence (the format the prompt asks for)."""
    return f"```python\n{code}```"


def _wrong_answer_feedback(problem: Any, code_format: Any, op: Any, max_chars: int, template: str) -> str:
    from rlef.common.protocol.messages import ExecutionResult, TestResult
    from rlef.common.text.prompts import render_feedback

    results = []
    for test in problem.public_tests:
        a, b = map(int, test.input.split())
        got = code_format.render(op.apply(a, b)) + "\n"
        results.append(TestResult(status="pass" if got.split() == test.output.split() else "wrong_answer", stdout=got))
    result = ExecutionResult(job_id="warm-start", compile_ok=True, tests=results, tests_total=len(results))
    return render_feedback(problem, problem.public_tests, result, max_chars=max_chars, template=template)


RETRIES = ("uniform", "untried")


def trace(problem: Any, rng: random.Random, *, max_turns: int, max_chars: int, template: str = "codecontests",
          formats: tuple[Any, ...] | None = None, retry: str = "uniform") -> list[dict[str, str]]:
    """The chat messages of one supervised trace of a generated problem (see the module docstring); later
    turns guess among ``formats``, the task set's conventions (default: all): any of them (``uniform``) or one
    this trace has not written yet (``untried``)."""
    from rlef.common.data import feedback_tasks as T
    from rlef.common.text.prompts import render_first_prompt

    meta = T.parse_problem_name(problem.problem_id)
    if meta is None:
        raise WarmStartError(f"problem {problem.problem_id!r} is not a generated feedback task (rlef data make-feedback-tasks)")
    op, true_format = T.OPS_BY_NAME[meta["op"]], T.FORMATS_BY_NAME[meta["format"]]
    messages = [{"role": "user", "content": render_first_prompt(problem, template)}]
    if meta["kind"] == "shown":
        messages.append({"role": "assistant", "content": response_text(T.program(op, true_format))})
        return messages
    tried: set[str] = set()
    for turn in range(max_turns):
        # Independent of the feedback's expected output: the warm start must not use it. ``untried`` depends on
        # the trace's own earlier programs only (a new guess after a failure, as an instruct model retries).
        pool = [f for f in formats or T.FORMATS if retry == "uniform" or f.name not in tried]
        guess = rng.choice(pool)
        tried.add(guess.name)
        messages.append({"role": "assistant", "content": response_text(T.program(op, guess))})
        if guess.name == true_format.name or turn == max_turns - 1:
            break
        messages.append({"role": "user", "content": _wrong_answer_feedback(problem, guess, op, max_chars, template)})
    return messages


def shown_twin(problem: Any, rng: random.Random) -> Any:
    """The same generated problem with its convention shown in the statement (a fresh example value)."""
    from dataclasses import replace

    from rlef.common.data import feedback_tasks as T

    meta = T.parse_problem_name(problem.problem_id)
    if meta is None:
        raise WarmStartError(f"problem {problem.problem_id!r} is not a generated feedback task")
    op, fmt = T.OPS_BY_NAME[meta["op"]], T.FORMATS_BY_NAME[meta["format"]]
    example = (rng.randint(*T.VALUE_RANGE), rng.randint(*T.VALUE_RANGE))
    name = "-".join([meta["split"], meta["index"], meta["op"], meta["format"], "shown"])
    return replace(problem, problem_id=name, description=T.statement(op, fmt, "shown", example))


def supervised_examples(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per conversation: loss on every assistant segment, -100 on every user segment."""
    from rlef.common.text.chat import conversation_segments

    out = []
    for messages in conversations:
        ids: list[int] = []
        labels: list[int] = []
        for i, seg in enumerate(conversation_segments(tokenizer, messages)):
            ids += seg
            labels += seg if i % 2 == 1 else [-100] * len(seg)
        out.append((ids, labels))
    return out


def family_corpus(problems: list[Any], max_chars: int) -> list[str]:
    """Text of the task family for the tokenizer: statements, every (op, format) program, feedback."""
    from rlef.common.data import feedback_tasks as T
    from rlef.common.text.prompts import render_first_prompt

    texts = [render_first_prompt(p, "codecontests") for p in problems[:400]]
    texts += [response_text(T.program(op, f)) for op in T.OPERATIONS for f in T.FORMATS]
    rng = random.Random(0)
    for p in problems[:200]:
        meta = T.parse_problem_name(p.problem_id)
        if meta is not None:
            wrong = rng.choice([f for f in T.FORMATS if f.name != meta["format"]])
            texts.append(_wrong_answer_feedback(p, wrong, T.OPS_BY_NAME[meta["op"]], max_chars, "codecontests"))
    return texts


def _tasks_digest(tasks_dir: Path) -> str:
    h = hashlib.sha256()
    for split in ("train", "valid", "test"):
        f = tasks_dir / f"{split}.jsonl"
        if f.exists():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def make_warm_start(
    out_dir: Path, tasks_dir: Path, *, seed: int = 0, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR, max_turns: int = 3, feedback_max_chars: int = 256, threads: int | None = 1,
    retry: str = "uniform",
) -> Path:
    """Build the warm start into ``out_dir`` from ``tasks_dir``'s train split; returns ``out_dir``."""
    import torch

    from rlef.common.models import tiny_model as tm
    from rlef.common.data.loaders import load_problems

    if steps < 1:
        raise WarmStartError(f"--steps must be a positive integer, got {steps}")
    if batch_size < 1:
        raise WarmStartError(f"--batch-size must be a positive integer, got {batch_size}")
    if not lr > 0:
        raise WarmStartError(f"--lr must be positive, got {lr}")
    if retry not in RETRIES:
        raise WarmStartError(f"--retry must be one of {', '.join(RETRIES)}, got {retry!r}")
    out_dir, tasks_dir = Path(out_dir), Path(tasks_dir)
    if not (tasks_dir / "train.jsonl").is_file():
        raise WarmStartError(
            f"--tasks {str(tasks_dir)!r} holds no train.jsonl: make it with `rlef data make-feedback-tasks {tasks_dir} --seed S`"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise WarmStartError(f"{out_dir} exists and is not a warm-start directory (no {MARKER}); refusing to overwrite it")
    start = time.monotonic()
    problems = load_problems("codecontests", str(tasks_dir), "train")
    corpus = tm.training_corpus() + family_corpus(problems, feedback_max_chars)
    tokenizer = tm.build_tokenizer(corpus)
    rng = random.Random(f"warm-start-{seed}")
    from rlef.common.data.feedback_tasks import read_manifest, task_conventions

    formats = task_conventions(read_manifest(tasks_dir))
    conversations = [trace(p, rng, max_turns=max_turns, max_chars=feedback_max_chars, formats=formats, retry=retry)
                     for p in problems]
    # Reading the statement is what an instruct model already does well: every hidden problem also gets a
    # one-turn trace of its "shown" twin (same operation and convention, the statement shows an example), so
    # half the traces teach reading the convention from the statement whatever the split's mix of kinds.
    conversations += [trace(shown_twin(p, rng), rng, max_turns=max_turns, max_chars=feedback_max_chars, formats=formats)
                      for p in problems if p.problem_id.endswith("-hidden")]
    examples = supervised_examples(tokenizer, conversations)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = tm.build_model(tokenizer, seed)
        losses = tm.supervised_steps(model, examples, tokenizer.pad_token_id, steps, seed, lr=lr, batch_size=batch_size,
                                     length_grouped=True)
    finally:
        torch.set_num_threads(old_threads)
    meta = {
        "build_version": BUILD_VERSION, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "retry": retry,
        "max_turns": max_turns, "tasks_dir": str(tasks_dir), "tasks_sha256": _tasks_digest(tasks_dir),
        "traces": len(examples), "mean_trace_tokens": round(sum(len(i) for i, _ in examples) / max(len(examples), 1), 1),
        "first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "vocab_size": len(tokenizer), "num_parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.monotonic() - start, 2),
    }
    tm.write_model_dir(out_dir, model, tokenizer, MARKER, meta)
    log.info("warm start written to %s in %.1f s (%d traces, %d steps, loss %.3f -> %.3f)", out_dir,
             meta["build_seconds"], len(examples), steps, meta["first_loss"], meta["final_loss"])
    return out_dir


def warm_start_info(model_dir: Path) -> dict | None:
    """The build record of a warm-start directory, or None."""
    try:
        meta = json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("build_version") == BUILD_VERSION else None


def is_current(model_dir: Path, tasks_dir: Path, *, seed: int, steps: int, retry: str = "uniform") -> bool:
    """True when ``model_dir`` holds what :func:`make_warm_start` would build now from ``tasks_dir``."""
    info = warm_start_info(model_dir)
    return (
        info is not None and info.get("seed") == seed and info.get("steps") == steps
        and info.get("retry", "uniform") == retry
        and info.get("tasks_sha256") == _tasks_digest(Path(tasks_dir))
        and (Path(model_dir) / "model.safetensors").is_file()
    )
