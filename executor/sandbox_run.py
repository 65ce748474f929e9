"""``rlef sandbox run``: one program through the real sandbox, exactly as a training job runs it.

The program becomes an ExecutionJob with one inline test, goes through the same checks a requester's job
gets (schema, executor caps) and through :func:`rlef.executor.jobs.execute` in a :class:`Sandbox` built from
``executor.*`` of the config (cgroups, nsjail, runner, checker, classification): no broker, no executor
process. Printed: the status, the feedback text the model would be shown for it (``prompt.*`` of the
config), CPU time and peak memory of the test's processes together, wall time, exit code.

Exit status: 0 the test passed, 1 it did not (any status, sandbox_error included), 2 the command itself
could not run (unreadable file, no sandbox).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from rlef.common.errors import MessageError, RlefError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, Limits, TestCase, encode


class SandboxRunError(RlefError):
    """An input file of ``rlef sandbox run`` cannot be read."""


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise SandboxRunError(f"cannot read {what} {path}: {exc}") from exc


def _feedback(config: Any, test: TestCase, result: ExecutionResult) -> str:
    """What the model would read as its next user message ("" when it passed: the episode ends there)."""
    from rlef.common.text import prompts
    from rlef.common.data.problems import Problem

    if result.passed:
        return ""
    problem = Problem(problem_id="sandbox-run", dataset="sample", split="train", description="", public_tests=[test], private_tests=[])
    cfg = config.prompt
    return prompts.render_feedback(
        problem, [test], result, max_chars=cfg.feedback_max_chars, max_tests=cfg.max_feedback_tests, template=cfg.template
    )


def run_program(config: Any, code: str, test: TestCase, limits: Limits) -> tuple[ExecutionResult, str, str]:
    """(result, feedback text, limits mode) of ``code`` on ``test`` through the real sandbox."""
    from rlef.common.protocol.execution_client import job_problem, refusal
    from rlef.executor.jobs import execute
    from rlef.executor.sandbox import Sandbox

    job = ExecutionJob(job_id=f"sandbox-run-{uuid.uuid4().hex[:12]}", code=code, tests=[test], limits=limits)
    try:
        decode(encode(job), ExecutionJob, sender="rlef sandbox run")
        reason = job_problem(job, config.executor)
    except MessageError as exc:
        reason = str(exc)
    if reason is not None:
        result = refusal(job.job_id, "client", reason, 1)
        return result, _feedback(config, test, result), "none"
    sandbox = Sandbox(config.executor)
    try:
        result = execute(job, sandbox, config.executor, "sandbox-run")
    finally:
        sandbox.close()
    return result, _feedback(config, test, result), sandbox.limits_mode


def summary(result: ExecutionResult, feedback: str, limits: Limits, mode: str) -> dict[str, Any]:
    test = result.tests[0] if result.tests else None
    return {
        "status": result.status,
        "passed": result.passed,
        "feedback": feedback,
        "cpu_s": test.cpu_s if test else None,
        "memory_bytes": test.memory_bytes if test else None,
        "time_s": test.time_s if test else None,
        "exit_code": test.exit_code if test else None,
        "stdout": test.stdout if test else "",
        "stderr": test.stderr if test else "",
        "compile_message": result.compile_message,
        "error": result.error,
        "limits": {"time_s": limits.time_s, "memory_bytes": limits.memory_bytes},
        "limits_mode": mode,
    }


def _text(info: dict[str, Any]) -> str:
    def number(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    memory = info["memory_bytes"]
    lines = [
        f"status:       {info['status']}",
        f"cpu time:     {number(info['cpu_s'], '.3f')} s (limit {info['limits']['time_s']} s)",
        f"peak memory:  {number(memory / (1 << 20) if memory is not None else None, '.1f')} MiB "
        f"(limit {info['limits']['memory_bytes'] / (1 << 20):.1f} MiB)",
        f"wall time:    {number(info['time_s'], '.3f')} s",
        f"exit code:    {info['exit_code']}",
        f"limits:       {info['limits_mode']}",
    ]
    if info["error"]:
        lines.append(f"error:        {info['error']}")
    lines.append("feedback:" if info["feedback"] else "feedback:     (none: the program passed, the episode would end)")
    if info["feedback"]:
        lines.append(info["feedback"])
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from rlef.common.cli import config_from_args

    config = config_from_args(args)
    code = _read(args.program, "program")
    test = TestCase(input=_read(args.input, "input"), output=_read(args.expected, "expected output"))
    limits = Limits(
        time_s=args.time_limit if args.time_limit is not None else config.executor.default_time_limit_s,
        memory_bytes=args.memory_limit if args.memory_limit is not None else config.executor.default_memory_limit_bytes,
    )
    result, feedback, mode = run_program(config, code, test, limits)
    info = summary(result, feedback, limits, mode)
    if args.json:
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(_text(info))
    return 0 if result.passed else 1


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides follow the options (``run PROGRAM --input F ... executor.x=y``): plain
    argparse assigns every positional in the first run of them, PROGRAM's, and rejects later ones."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(subparsers: argparse._SubParsersAction) -> None:
    from rlef.common.cli import add_config_arguments

    sandbox = subparsers.add_parser("sandbox", help="run programs through the real sandbox, as training jobs run")
    commands = sandbox.add_subparsers(
        dest="sandbox_command", required=True, metavar="SUBCOMMAND", parser_class=_IntermixedParser
    )
    run = commands.add_parser("run", help="run PROGRAM on one test: status, feedback text, CPU time, peak memory")
    run.add_argument("program", metavar="PROGRAM", help="Python program file")
    run.add_argument("--input", required=True, metavar="FILE", help="the test's stdin")
    run.add_argument("--expected", required=True, metavar="FILE", help="the test's expected stdout")
    run.add_argument("--time-limit", type=float, default=None, metavar="S", help="CPU seconds (default: executor.default_time_limit_s)")
    run.add_argument("--memory-limit", type=int, default=None, metavar="BYTES", help="bytes (default: executor.default_memory_limit_bytes)")
    run.add_argument("--json", action="store_true", help="one JSON object instead of text")
    add_config_arguments(run)
    run.set_defaults(func=main)
