"""Requester side of the executor broker, used by actors, evaluation scripts and tests.

One DEALER socket carries many jobs at once; replies are matched to callers by ``job_id`` (make them unique,
e.g. uuid4). No call ever hangs: after ``timeout_s`` a job is answered locally with a sandbox_error result
(``error="timed out waiting for an executor"``) and counted; a late reply for it is dropped.

- ``await run(job)`` / ``await run_many(jobs)``: with a ``Transport(config, asyncio=True)``.
- ``run_sync(job)`` / ``run_many_sync(jobs)``: with a plain ``Transport(config)``, for scripts.

One client per event loop (async) or per thread (sync): like its ZeroMQ socket, it is not thread-safe.

Broker restarts (async client): the broker keeps no durable state, so the jobs it held die with it. The
client watches its socket (a ZeroMQ monitor): once the connection was lost and a new one is made (the
broker is back), it re-sends every job still waiting, under the same ``job_id``: the broker drops a job_id
it already holds, so a job sent twice while disconnected still runs once. No episode then waits out its
whole timeout for a job the dead broker lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from rlef.common.config import ExecutorConfig
from rlef.common.errors import MessageError
from rlef.common.log_limit import LogOnce
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, Limits, TestsRef, encode
from rlef.common.data.problems import Problem
from rlef.common.protocol.transport import Transport
from rlef.monitoring import metrics_execution_client as m

log = logging.getLogger(__name__)

TIMEOUT_ERROR = "timed out waiting for an executor"
# Every refusal's error starts with this, then who refused it: "job refused by the client: ...".
REFUSED = "job refused by the"
# An overloaded broker's answer: a sandbox_error that is NOT a refusal, so requesters resend it after a backoff.
BUSY = "executor broker busy"


def refusal(job_id: str, who: str, reason: str, tests_total: int = 0) -> ExecutionResult:
    """The answer to a job that will not run: a sandbox_error result whose error names the field and limit."""
    return ExecutionResult(job_id=job_id, compile_ok=True, tests_total=tests_total, error=f"{REFUSED} {who}: {reason}"[:1 << 20])


def job_problem(job: ExecutionJob, config: ExecutorConfig) -> str | None:
    """Why ``config``'s executor would refuse ``job`` (None: it fits). Shared by the client, broker and executor.

    Tests by reference are counted by the executor once it has looked them up.
    """
    code_bytes = len(job.code.encode("utf-8", errors="surrogatepass"))
    if code_bytes > config.max_code_bytes:
        return f"code is {code_bytes} bytes, more than executor.max_code_bytes={config.max_code_bytes}"
    if job.tests is not None and len(job.tests) > config.max_tests_per_job:
        return f"job has {len(job.tests)} tests, more than executor.max_tests_per_job={config.max_tests_per_job}"
    if job.limits.time_s > config.max_time_limit_s:
        return f"limits.time_s={job.limits.time_s} is more than executor.max_time_limit_s={config.max_time_limit_s}"
    if job.limits.memory_bytes > config.max_memory_limit_bytes:
        return (
            f"limits.memory_bytes={job.limits.memory_bytes} is more than "
            f"executor.max_memory_limit_bytes={config.max_memory_limit_bytes}"
        )
    return None


def limits_for(problem: Problem, config: ExecutorConfig) -> Limits:
    """The problem's own limits (CodeContests time_limit / memory_limit_bytes), else the configured defaults."""
    return Limits(
        time_s=problem.time_limit_s or config.default_time_limit_s,
        memory_bytes=problem.memory_limit_bytes or config.default_memory_limit_bytes,
    )


def make_job(
    problem: Problem, code: str, test_set: str, limits: Limits, *, inline: bool = False, path: str | None = None,
    stop_on_first_failure: bool = False, job_id: str | None = None,
) -> ExecutionJob:
    """A job running ``code`` on ``problem``'s ``test_set``.

    By reference (default): the executor looks the tests up (``path`` = the dataset location on the executor
    host, needed for codecontests) and adds the function harness itself. ``inline=True`` ships the tests and
    the harnessed program in the message instead.
    """
    common = dict(job_id=job_id or uuid.uuid4().hex, limits=limits, stop_on_first_failure=stop_on_first_failure)
    if inline:
        return ExecutionJob(code=problem.program(code), tests=problem.tests(test_set), **common)
    ref = TestsRef(dataset=problem.dataset, split=problem.split, problem_id=problem.problem_id, test_set=test_set, path=path)
    return ExecutionJob(code=code, tests_ref=ref, **common)


def failed_result(job_id: str, error: str, *, tests_total: int, **fields: Any) -> ExecutionResult:
    """A failure on our side (timeout, crash, lost worker, busy broker) as the job's answer: a sandbox_error
    result (no test ran) whose error says what failed; never scored, resent where the caller resends."""
    return ExecutionResult(job_id=job_id, compile_ok=True, tests_total=tests_total, error=error, **fields)


def timeout_result(job: ExecutionJob, timeout_s: float) -> ExecutionResult:
    return failed_result(job.job_id, TIMEOUT_ERROR, tests_total=len(job.tests or []), seconds=timeout_s)


class ExecutionClient:
    """Submits jobs; a job that would be refused on the way is answered at once instead of being sent.

    Before sending, every job is encoded and validated as the broker will validate it (every field's type and
    bound, e.g. ``limits.time_s`` > 0), its frame is checked against ``transport.max_message_bytes`` (ZeroMQ
    would drop a longer frame, and the connection with it, without a word), and, when ``executor`` is given,
    against that executor config's caps (``max_code_bytes``, ``max_tests_per_job``, ``max_time_limit_s``,
    ``max_memory_limit_bytes``). A refusal is a sandbox_error result whose error starts with REFUSED.
    """

    def __init__(
        self, transport: Transport, endpoint: str, *, client_id: str, timeout_s: float,
        executor: ExecutorConfig | None = None,
    ):
        self.endpoint = endpoint
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.executor = executor
        self.max_frame_bytes = transport.config.max_message_bytes
        self.refused = 0
        self._refusal_log = LogOnce(log, "execution client: refused jobs", max_keys=1000)  # once per cause
        identity = f"{client_id}/{uuid.uuid4().hex[:8]}".encode()
        self.sock = transport.client(zmq.DEALER, endpoint, identity=identity)
        self.is_async = isinstance(self.sock, zmq.asyncio.Socket)
        self.timeouts = 0
        self.bad_replies = 0
        self._pending: dict[str, asyncio.Future] = {}
        self._frames: dict[str, bytes] = {}  # frame of each pending job, re-sent after a reconnection
        self.resent = 0
        self._receiver: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._monitor_sock: zmq.Socket | None = None
        self._bad_log = LogOnce(log, "execution client: bad replies")

    # ------------------------------------------------------------ asyncio

    async def run(self, job: ExecutionJob) -> ExecutionResult:
        """Submit ``job`` and wait for its result (at most ``timeout_s``)."""
        if not self.is_async:
            raise TypeError("ExecutionClient.run needs Transport(config, asyncio=True); use run_sync otherwise")
        if job.job_id in self._pending:
            raise ValueError(f"job_id {job.job_id} is already in flight on this client")
        start = time.monotonic()
        frame, refused = self._prepare(job)
        if refused is not None:
            self._account(refused, start)
            return refused
        loop = asyncio.get_running_loop()
        if self._receiver is None or self._receiver.done():
            self._receiver = loop.create_task(self._receive())
        if self._monitor is None or self._monitor.done():
            self._monitor = loop.create_task(self._watch_connection())
        future: asyncio.Future = loop.create_future()
        self._pending[job.job_id] = future
        self._frames[job.job_id] = frame
        m.CLIENT_PENDING.inc()
        try:
            # The send is inside the timeout too: with the send queue full (no broker) it would block.
            result = await asyncio.wait_for(self._send_and_wait(frame, future), self.timeout_s)
        except asyncio.TimeoutError:
            result = self._timed_out(job)
        finally:
            self._pending.pop(job.job_id, None)
            self._frames.pop(job.job_id, None)
            m.CLIENT_PENDING.dec()
        self._account(result, start)
        return result

    async def _send_and_wait(self, frame: bytes, future: asyncio.Future) -> ExecutionResult:
        await self.sock.send(frame)
        return await future

    async def _watch_connection(self) -> None:
        """Re-send every pending job when the connection comes back after a loss (module docstring)."""
        if self._monitor_sock is None:
            self._monitor_sock = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        lost = False
        while True:
            event = parse_monitor_message(await self._monitor_sock.recv_multipart())["event"]
            if event == zmq.EVENT_DISCONNECTED:
                lost = True
                log.warning("execution client %s: connection to %s lost; %d job(s) waiting will be re-sent on reconnect",
                            self.client_id, self.endpoint, len(self._frames))
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and lost:
                lost = False
                frames = list(self._frames.values())
                for frame in frames:
                    await self.sock.send(frame)
                self.resent += len(frames)
                m.CLIENT_RESENT.inc(len(frames))
                log.warning("execution client %s: reconnected to %s; re-sent %d job(s)", self.client_id, self.endpoint, len(frames))

    async def run_many(self, jobs: Iterable[ExecutionJob]) -> list[ExecutionResult]:
        return list(await asyncio.gather(*(self.run(job) for job in jobs)))

    async def _receive(self) -> None:
        while True:
            frame = await self.sock.recv()
            result = self._decode(frame)
            if result is None:
                continue
            future = self._pending.get(result.job_id)
            if future is None or future.done():
                self._bad(f"reply for job {result.job_id} which is not waiting (late or unknown)")
                continue
            future.set_result(result)

    # ------------------------------------------------------------ blocking

    def run_sync(self, job: ExecutionJob) -> ExecutionResult:
        return self.run_many_sync([job])[0]

    def run_many_sync(self, jobs: Iterable[ExecutionJob]) -> list[ExecutionResult]:
        """Submit all ``jobs`` at once and collect their results (each bounded by ``timeout_s``)."""
        if self.is_async:
            raise TypeError("ExecutionClient.run_sync needs a plain Transport(config); use await run() otherwise")
        jobs = list(jobs)
        start = time.monotonic()
        waiting = {job.job_id: job for job in jobs}
        if len(waiting) != len(jobs):
            raise ValueError("job_ids in one batch must be unique")
        deadline = start + self.timeout_s
        results: dict[str, ExecutionResult] = {}
        for job in jobs:
            frame, refused = self._prepare(job)
            if refused is not None:
                del waiting[job.job_id]
                results[job.job_id] = refused
                self._account(refused, start)
                continue
            self._send_before(frame, deadline)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(remaining * 1000, zmq.POLLIN):
                break
            result = self._decode(self.sock.recv())
            if result is None:
                continue
            if result.job_id not in waiting:
                self._bad(f"reply for job {result.job_id} which is not waiting (late or unknown)")
                continue
            del waiting[result.job_id]
            results[result.job_id] = result
            self._account(result, start)
        for job in waiting.values():
            results[job.job_id] = self._timed_out(job)
            self._account(results[job.job_id], start)
        return [results[job.job_id] for job in jobs]

    def _send_before(self, frame: bytes, deadline: float) -> bool:
        """Queue ``frame``; False when the send queue stayed full until ``deadline`` (the job then times out)."""
        while True:
            try:
                self.sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.sock.poll(remaining * 1000, zmq.POLLOUT):
                    return False

    # ------------------------------------------------------------ shared

    def _prepare(self, job: ExecutionJob) -> tuple[bytes, ExecutionResult | None]:
        """The job's frame, or the refusal to answer it with instead of sending it."""
        reason = None
        frame = b""
        try:
            frame = encode(job)
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec cannot encode what was put in the job
            reason = f"cannot encode the job: {type(exc).__name__}: {exc}"
        if reason is None and len(frame) > self.max_frame_bytes:
            reason = f"the job is {len(frame)} bytes encoded, more than transport.max_message_bytes={self.max_frame_bytes}"
        if reason is None:
            try:
                decode(frame, ExecutionJob, sender="this client")
            except MessageError as exc:
                reason = str(exc)
        if reason is None and self.executor is not None:
            reason = job_problem(job, self.executor)
        if reason is None:
            return frame, None
        self.refused += 1
        key = reason.split(":", 1)[0][:80]
        self._refusal_log.warning(key, "execution client %s refused job %s: %s (further refusals like it are only counted)",
                                  self.client_id, job.job_id, reason)
        tests_total = len(job.tests) if isinstance(job.tests, list) else 0
        return frame, refusal(str(job.job_id)[:256] or "?", "client", reason, tests_total)

    def _decode(self, frame: bytes) -> ExecutionResult | None:
        try:
            return decode(frame, ExecutionResult, sender=self.endpoint)
        except MessageError as exc:
            self._bad(str(exc))
            return None

    def _bad(self, reason: str) -> None:
        self.bad_replies += 1
        m.CLIENT_BAD_REPLIES.inc()
        self._bad_log.warning("reply", "execution client %s dropped a reply: %s (further drops are only counted)",
                              self.client_id, reason)

    def _timed_out(self, job: ExecutionJob) -> ExecutionResult:
        self.timeouts += 1
        m.CLIENT_TIMEOUTS.inc()
        log.warning("job %s: no executor answered within %.1f s", job.job_id, self.timeout_s)
        return timeout_result(job, self.timeout_s)

    def _account(self, result: ExecutionResult, start: float) -> None:
        m.CLIENT_JOBS.labels(result.status).inc()
        m.CLIENT_LATENCY.observe(time.monotonic() - start)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            self._receiver = None
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        if self._monitor_sock is not None:
            self.sock.disable_monitor()
            self._monitor_sock.close(0)
            self._monitor_sock = None
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self.sock.close(0)
