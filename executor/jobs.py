"""One execution job, end to end inside an executor: resolve its tests, check its size, run it in a sandbox,
turn every failure of ours into a job-level ``error`` (sandbox_error) instead of blaming the program.

Tests given by reference (``tests_ref``) are looked up with ``rlef.common.data.loaders.find_problem`` (cached per
process). For a function-style problem (HumanEval) the executor runs ``problem.program(code)``, i.e. the code
plus the stdin test harness, unless the code already ends with that harness.
"""

from __future__ import annotations

import functools
import logging
import time

from rlef.common.config import ExecutorConfig
from rlef.common.errors import DataError, SandboxError
from rlef.common.protocol.execution_client import REFUSED, failed_result, job_problem
from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, TestCase, TestResult
from rlef.common.data.problems import FUNCTION_HARNESS, Problem
from rlef.executor.jail import JailDied
from rlef.executor.sandbox import Sandbox
from rlef.monitoring import metrics_executor as m

log = logging.getLogger(__name__)

JAIL_ATTEMPTS = 2
# Results must stay far below transport.max_message_bytes (64 MiB by default): beyond this many bytes of
# captured output per job, each test's stdout is cut further (the checker has already seen all of it).
RESULT_OUTPUT_BUDGET = 8 << 20


class JobRejected(Exception):
    """The job cannot be run as sent (too big, unknown problem); the reason goes back as its error."""


@functools.lru_cache(maxsize=8192)
def _problem(dataset: str, split: str, problem_id: str, path: str | None) -> Problem:
    from rlef.common.data.loaders import find_problem

    return find_problem(dataset, split, problem_id, path=path)


def resolve(job: ExecutionJob, config: ExecutorConfig) -> tuple[str, list[TestCase]]:
    """The program to run and its tests; raises JobRejected when the job is unusable."""
    problem_text = job_problem(job, config)
    if problem_text is not None:
        raise JobRejected(problem_text)
    code = job.code
    if job.tests is not None:
        tests = job.tests
    else:
        ref = job.tests_ref
        assert ref is not None  # the message schema guarantees exactly one source
        try:
            problem = _problem(ref.dataset, ref.split, ref.problem_id, ref.path)
            tests = problem.tests(ref.test_set)
        except (DataError, KeyError, LookupError, OSError) as exc:
            raise JobRejected(
                f"cannot resolve tests {ref.dataset}/{ref.split}/{ref.problem_id}/{ref.test_set}: {exc}"
            ) from None
        if problem.kind == "function" and not code.endswith(FUNCTION_HARNESS):
            code = problem.program(code)
    if len(tests) > config.max_tests_per_job:
        raise JobRejected(f"job has {len(tests)} tests, more than executor.max_tests_per_job={config.max_tests_per_job}")
    return code, tests


def fit_outputs(tests: list[TestResult], budget: int = RESULT_OUTPUT_BUDGET) -> list[TestResult]:
    """Cut every test's stdout to an equal share of ``budget`` when together they exceed it."""
    total = sum(len(t.stdout) + len(t.stderr) for t in tests)
    if total <= budget:
        return tests
    share = max(1024, budget // max(1, len(tests)))
    return [t.replace(stdout=t.stdout[:share]) if len(t.stdout) > share else t for t in tests]


def _failed(job: ExecutionJob, worker_id: str, error: str, tests_total: int, start: float) -> ExecutionResult:
    return failed_result(job.job_id, error, worker_id=worker_id, tests_total=tests_total, seconds=time.monotonic() - start)


def execute(job: ExecutionJob, sandbox: Sandbox, config: ExecutorConfig, worker_id: str = "") -> ExecutionResult:
    """Run ``job``; never raises for anything the job or the sandbox did (it becomes the result)."""
    start = time.monotonic()
    try:
        code, tests = resolve(job, config)
    except JobRejected as exc:
        m.SANDBOX_ERRORS.labels("rejected").inc()
        result = _failed(job, worker_id, f"{REFUSED} executor: {exc}", len(job.tests or []), start)
        m.JOBS.labels(result.status).inc()
        return result
    result = None
    for attempt in range(JAIL_ATTEMPTS):
        try:
            outcome = sandbox.run(code, tests, job.limits, job.stop_on_first_failure, job.gate_tests)
        except JailDied as exc:
            m.SANDBOX_ERRORS.labels("jail_died").inc()
            log.warning("job %s: %s (attempt %d of %d)", job.job_id, exc, attempt + 1, JAIL_ATTEMPTS)
            result = _failed(job, worker_id, f"sandbox failed: {exc}", len(tests), start)
            if sandbox.aborted:
                break
            if attempt + 1 < JAIL_ATTEMPTS:
                m.JAIL_RESTARTS.inc()
            continue
        except SandboxError as exc:
            m.SANDBOX_ERRORS.labels("sandbox").inc()
            log.error("job %s: %s", job.job_id, exc)
            result = _failed(job, worker_id, f"sandbox failed: {exc}", len(tests), start)
            break
        result = ExecutionResult(
            job_id=job.job_id, worker_id=worker_id, compile_ok=outcome.compile_ok,
            compile_message=outcome.compile_message, tests=fit_outputs(outcome.tests), tests_total=len(tests),
            seconds=time.monotonic() - start,
        )
        break
    assert result is not None
    m.JOBS.labels(result.status).inc()
    m.JOB_SECONDS.observe(result.seconds)
    for test in result.tests:
        m.TESTS.labels(test.status).inc()
        m.TEST_SECONDS.observe(test.time_s)
    return result
