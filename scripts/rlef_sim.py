"""Usage: python scripts/rlef_sim.py MODEL_DIR TASKS_DIR [--batches N] [--seed S] [--eval N] [--out FILE] [KEY=VALUE ...]

A synchronous RLEF loop in ONE process, for research on what makes the learning proof learn: the system's own
episode code (rlef.actor.episode.EpisodePlayer on the hf engine) and its own learner (rlef.learner.ppo.PPOLearner
on a 1-rank gloo group), with the sandbox replaced by an in-process runner of the generated programs. No
broker, no nsjail, no ZeroMQ, no staleness: what is left is the method, the model and the task. On ONE core it
runs about 8 episodes/s (the whole system: 5 on two), so two configurations can be compared side by side on
the 2-core machine before a real run (docs/results.md, "How the configuration was found"). KEY=VALUE are config
overrides of configs/tiny-cpu.yaml (e.g. learner.lr=2.5e-4 learner.batch_rollouts=128).

NOT a sandbox: programs run in this process with a few builtins and a CPU alarm. Only for the feedback-task
family (whose programs are one-line arithmetic), never for real datasets.

Prints one line per batch (solve rate, turn-1 solve rate of hidden problems, fix rate of turn-1 failures, KL)
and, with --eval N, the final policy's held-out test numbers (N problems x 3 rollouts at 1@3 sampling, real
and random feedback): the same figures as the system's final evaluation. --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rlef.actor.backends.hf import HfBackend  # noqa: E402
from rlef.actor.episode import EpisodePlayer  # noqa: E402
from rlef.common.config import load_config  # noqa: E402
from rlef.common.data.loaders import load_problems  # noqa: E402
from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, TestResult  # noqa: E402
from rlef.executor.checker import outputs_match  # noqa: E402
from rlef.learner.parallel import full_state_dict, init_distributed  # noqa: E402
from rlef.learner.ppo import PPOLearner  # noqa: E402

SAFE_BUILTINS = {name: getattr(__builtins__, name, None) if not isinstance(__builtins__, dict) else __builtins__[name]
                 for name in ("int", "str", "map", "max", "min", "abs", "sum", "len", "range", "float", "round", "divmod",
                          "ValueError", "ZeroDivisionError", "Exception")}
FORBIDDEN = ("import", "open", "__", "while", "exec", "eval", "globals", "locals", "getattr", "lambda")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def run_program(code: str, stdin: str) -> tuple[str, str, str]:
    """(status, stdout, stderr) of ``code`` on ``stdin``, in process: pass/fail is decided by the caller."""
    if any(word in code for word in FORBIDDEN):
        return "runtime_error", "", "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nNameError: forbidden in the simulator\n"
    lines = iter(stdin.splitlines())
    out = io.StringIO()

    def _input(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError("EOF when reading a line") from None

    def _print(*args, sep=" ", end="\n", **_kw) -> None:
        out.write(sep.join(str(a) for a in args) + end)

    env = {"__builtins__": {**SAFE_BUILTINS, "input": _input, "print": _print, "EOFError": EOFError}}
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        exec(compile(code, "<string>", "exec"), env)  # noqa: S102 - research probe on generated one-liners
    except _Timeout:
        return "timeout", out.getvalue(), ""
    except Exception as exc:  # noqa: BLE001 - the program's own error becomes its stack trace
        return "runtime_error", out.getvalue(), (
            f"Traceback (most recent call last):\n  File \"<string>\", line 2, in <module>\n{type(exc).__name__}: {exc}\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if len(out.getvalue()) > 1 << 16:
        return "output_limit", out.getvalue()[: 1 << 16], ""
    return "ok", out.getvalue(), ""


class InProcessExecutor:
    """The Executor protocol of rlef.actor.episode, answered in this process (see the module docstring)."""

    async def run(self, job: ExecutionJob) -> ExecutionResult:
        try:
            compile(job.code, "<string>", "exec")
        except SyntaxError as exc:
            return ExecutionResult(job_id=job.job_id, compile_ok=False, compile_message=f"SyntaxError: {exc.msg}",
                                   tests=[], tests_total=len(job.tests))
        results = []
        for test in job.tests:
            status, stdout, stderr = run_program(job.code, test.input)
            if status == "ok":
                status = "pass" if outputs_match(test.output, stdout) else "wrong_answer"
            results.append(TestResult(status=status, stdout=stdout[:4096], stderr=stderr))
        return ExecutionResult(job_id=job.job_id, compile_ok=True, tests=results, tests_total=len(job.tests))


class Weights(SimpleNamespace):
    version: int
    tensors: dict


def kind(problem_id: str) -> str:
    return problem_id.rsplit("-", 1)[-1]


def batch_figures(records) -> dict[str, float]:
    """Solve rate, hidden turn-1 solve rate and the fix rate of turn-1 failures of finished episodes."""
    n = len(records)
    solved = sum(r.rollout.final.passed for r in records)
    hidden = [r for r in records if kind(r.problem.problem_id) == "hidden"]
    t1_fail = [r for r in records if r.turns[0].outcome.status != "pass"]
    fixed = sum(r.rollout.final.passed for r in t1_fail)
    return {
        "solve": solved / max(n, 1),
        "hidden_t1": sum(r.turns[0].outcome.status == "pass" for r in hidden) / max(len(hidden), 1),
        "hidden": sum(r.rollout.final.passed for r in hidden) / max(len(hidden), 1),
        "shown": sum(r.rollout.final.passed for r in records if kind(r.problem.problem_id) == "shown")
        / max(sum(kind(r.problem.problem_id) == "shown" for r in records), 1),
        "fix": fixed / max(len(t1_fail), 1),
    }


async def play(player: EpisodePlayer, problems, tag: str, concurrency: int):
    sem = asyncio.Semaphore(concurrency)

    async def one(i, p):
        async with sem:
            return await player.run_episode(p, f"{tag}-{i}")

    return [r for r in await asyncio.gather(*(one(i, p) for i, p in enumerate(problems))) if r is not None]


async def main_async(args, overrides: list[str]) -> dict:
    config = load_config("configs/tiny-cpu.yaml", [f"model.path={args.model}", f"data.path={args.tasks}",
                                                   f"run.seed={args.seed}", *overrides])
    torch.manual_seed(args.seed)
    rank, world, device = init_distributed("gloo", "cpu")
    assert world == 1, "one process"
    learner = PPOLearner(config, device)
    backend = HfBackend(config.model.path, dtype="float32", device="cpu", seed=args.seed, threads=None)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    executor = InProcessExecutor()
    player = EpisodePlayer(config, backend=backend, executor=executor, tokenizer=tokenizer, actor_id="sim", seed=args.seed)
    train = load_problems("codecontests", config.data.path, "train")
    rng = random.Random(args.seed)
    B = config.learner.batch_rollouts
    history = []
    t0 = time.time()
    for b in range(args.batches):
        problems = [rng.choice(train) for _ in range(B)]
        started = time.time()
        records = await play(player, problems, f"b{b}", args.concurrency)
        rng.shuffle(records)
        generated = time.time()
        stats, updates = learner.train_batch([r.rollout for r in records])
        state = full_state_dict(learner.policy)
        await backend.load_weights(Weights(version=b + 1, tensors=state))
        trained = time.time()
        fig = batch_figures(records)
        fig.update(batch=b + 1, kl=stats["kl"], ev=stats["explained_variance"],
                   entropy=sum(u["entropy"] for u in updates) / len(updates),
                   grad=max(u["grad_norm"] for u in updates), gen_s=round(generated - started, 1),
                   train_s=round(trained - generated, 1), seconds=round(time.time() - t0, 1))
        history.append(fig)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()), flush=True)
    result = {"seed": args.seed, "overrides": overrides, "history": history}
    if args.eval:
        result["eval"] = await evaluate(config, backend, tokenizer, executor, args)
        print("EVAL", json.dumps(result["eval"]), flush=True)
    await backend.close()
    return result


async def evaluate(config, backend, tokenizer, executor, args) -> dict:
    """The final policy on the held-out test split at 1@3 sampling (temperature 0.2, top-p 0.95)."""
    out = {}
    test = load_problems("codecontests", config.data.path, "test")[: args.eval]
    for random_fb in (False, True):
        cfg = load_config("configs/tiny-cpu.yaml", [f"model.path={args.model}", f"data.path={args.tasks}",
                                                    "actor.sampling.temperature=0.2", "actor.sampling.top_p=0.95",
                                                    f"actor.random_feedback={str(random_fb).lower()}"])
        player = EpisodePlayer(cfg, backend=backend, executor=executor, tokenizer=tokenizer, actor_id="sim-eval",
                               seed=args.seed, feedback_problems=test)
        records = await play(player, [p for p in test for _ in range(3)], "eval", args.concurrency)
        out["random" if random_fb else "real"] = batch_figures(records)
        if args.samples:
            with open(args.samples, "a") as f:
                for r in records:
                    f.write(json.dumps({"random": random_fb, "problem": r.problem.problem_id, "passed": r.rollout.final.passed,
                                        "turns": [[t.response_text, t.feedback] for t in r.turns]}) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("tasks")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=0, help="held-out test problems to evaluate at the end (x3 rollouts)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=Path, help="append the evaluation's episodes (texts) to this JSONL file")
    parser.add_argument("--concurrency", type=int, default=64, help="episodes in flight (the system's actor: 16)")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGALRM, _alarm)
    result = asyncio.run(main_async(args, overrides))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
