"""The executor broker: zguide's load-balancing broker with Paranoid Pirate heartbeats, one thread, one loop.

Frontend (ROUTER, bound): requesters' DEALER sockets send encoded ExecutionJob frames and get ExecutionResult
frames back. Backend (ROUTER, bound): every sandbox slot of every executor is one worker (a DEALER): it says
``Control(op="register")`` when ready, sends ``Control(op="heartbeat")`` every interval (busy or not), gets
jobs, sends results back, and says ``Control(op="stop")`` when it leaves.

Invariants:
- A job goes to one idle worker at a time; a worker has at most one job.
- A worker silent for ``heartbeat_interval_s * heartbeat_liveness`` (or unroutable) is dropped; its job is
  requeued at the front, at most ``max_retries`` times, then answered with a sandbox_error result. So every
  accepted job gets exactly one answer while the broker lives; a requester's own timeout covers the rest.
- A result is matched by job_id, whichever worker sends it (a late result of a requeued job still wins; the
  duplicate that follows is dropped).
- Bad frames are counted, logged once per sender and cause, and dropped; the loop never dies on input. A
  job that fails validation but has a readable job_id, or that exceeds this config's executor caps
  (``job_problem``), is answered at once with a refusal naming the field and the limit, never queued.
- The queue is bounded (``executor.broker_max_queued_jobs``): a job beyond it is answered at once with a
  "busy" sandbox_error (not a refusal), which requesters resend after a backoff, so a flood of requesters
  costs the broker bounded memory and every job still gets an answer.
The broker holds no durable state: restarting it loses queued jobs (requesters time out and resubmit);
workers notice the silence and reconnect by themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import zmq

from rlef.common.config import ExecutorConfig
from rlef.common.errors import MessageError
from rlef.common.protocol.execution_client import BUSY, failed_result, job_problem, refusal
from rlef.common.log_limit import LogLimiter, printable
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, ExecutionJob, ExecutionResult, encode
from rlef.common.protocol.router_loop import drain_router
from rlef.common.protocol.transport import Transport
from rlef.executor.dropped import DropLog
from rlef.executor.refusals import salvage_job_id
from rlef.monitoring import metrics_executor as m
from rlef.monitoring.metrics import beat

log = logging.getLogger(__name__)


@dataclass
class _Job:
    job_id: str
    client: bytes
    frame: bytes
    arrived: float
    attempts: int = 0
    worker: bytes | None = None
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Worker:
    identity: bytes
    expiry: float
    job_id: str | None = None


class Broker:
    def __init__(self, transport: Transport, frontend: str, backend: str, config: ExecutorConfig):
        self.config = config
        self.frontend = transport.server(zmq.ROUTER, frontend)
        self.backend = transport.server(zmq.ROUTER, backend)
        self.jobs: dict[str, _Job] = {}
        self.queue: deque[str] = deque()
        self.workers: dict[bytes, _Worker] = {}
        self.idle: OrderedDict[bytes, None] = OrderedDict()
        self.drops = DropLog("broker", log)
        # A requester that sends and never reads (or leaves) must not get a log line per answer it misses.
        self._undelivered = LogLimiter(log, "broker: answers not delivered")
        self.weak_executors: set[str] = set()
        self.stopped = threading.Event()
        self._heartbeat = encode(Control(op="heartbeat", sender_id="broker", role="broker"))

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from a signal handler or another thread)."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        interval = self.config.heartbeat_interval_s
        next_beat = time.monotonic() + interval
        while not self.stopped.is_set():
            timeout_ms = max(0.0, next_beat - time.monotonic()) * 1000
            for sock, _ in poller.poll(min(timeout_ms, 200)):
                if sock is self.backend:
                    self._drain(self.backend, self._on_backend)
                else:
                    self._drain(self.frontend, self._on_frontend)
            now = time.monotonic()
            if now >= next_beat:
                self._beat(now)
                next_beat = now + interval
            self._dispatch()
            self._gauges()

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.frontend.close(0)
        self.backend.close(0)

    def _drain(self, sock: zmq.Socket, handler) -> None:
        # Read everything queued (bounded) before dispatching, so a burst costs one dispatch pass.
        drain_router(sock, handler, lambda identity, reason: self.drops.drop(reason, identity.hex(), "frames"))

    # ------------------------------------------------------------ requesters

    def _on_frontend(self, client: bytes, frame: bytes) -> None:
        try:
            job = decode(frame, ExecutionJob, sender=client.hex())
        except MessageError as exc:
            self.drops.drop(str(exc), client.hex(), exc.field or exc.reason[:40])
            job_id = salvage_job_id(frame)
            if job_id is not None:  # a job we cannot run still gets its answer now, naming the field
                self._refuse(client, job_id, str(exc))
            return
        reason = job_problem(job, self.config)
        if reason is not None:
            self._refuse(client, job.job_id, reason, len(job.tests or []))
            return
        if job.job_id in self.jobs:
            self.drops.drop(f"job_id {job.job_id} is already queued or running", client.hex(), "duplicate job_id")
            return
        if len(self.queue) >= self.config.broker_max_queued_jobs:
            self._answer_busy(client, job)
            return
        self.jobs[job.job_id] = _Job(job.job_id, client, frame, time.monotonic())
        self.queue.append(job.job_id)
        m.BROKER_JOBS.labels("received").inc()

    def _refuse(self, client: bytes, job_id: str, reason: str, tests_total: int = 0) -> None:
        """Answer a job that will not be queued (never touches a queued job of the same id)."""
        self._answer(client, refusal(job_id, "broker", reason, tests_total), "refused")

    def _answer_busy(self, client: bytes, job: ExecutionJob) -> None:
        limit = self.config.broker_max_queued_jobs
        error = f"{BUSY}: {len(self.queue)} jobs queued (executor.broker_max_queued_jobs={limit}); resend later"
        self._answer(client, failed_result(job.job_id, error, tests_total=len(job.tests or [])), "busy")

    def _reply(self, job: _Job, result: ExecutionResult, outcome: str) -> None:
        self.jobs.pop(job.job_id, None)
        if self._answer(job.client, result, outcome):
            m.BROKER_LATENCY.observe(time.monotonic() - job.arrived)

    def _answer(self, client: bytes, result: ExecutionResult, outcome: str) -> bool:
        """Send ``result`` to its requester and count it under ``outcome``; False when it could not be delivered."""
        try:
            self.frontend.send_multipart([client, encode(result)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # requester gone (EHOSTUNREACH) or its queue is full
            m.BROKER_JOBS.labels("requester_gone").inc()
            self._undelivered.info("%s answer to job %s not delivered to %s: %s", outcome, result.job_id, client.hex(), exc)
            return False
        m.BROKER_JOBS.labels(outcome).inc()
        return True

    # ------------------------------------------------------------ workers

    def _on_backend(self, identity: bytes, frame: bytes) -> None:
        sender = identity.decode("utf-8", errors="replace")
        try:
            message = decode(frame, (ExecutionResult, Control), sender=sender)
        except MessageError as exc:
            self.drops.drop(str(exc), sender, exc.field or exc.reason[:40])
            return
        worker = self.workers.get(identity)
        if worker is not None:
            worker.expiry = self._expiry()
        if isinstance(message, ExecutionResult):
            self._on_result(identity, worker, message)
        elif message.op == "register":
            if worker is not None and worker.job_id is not None:
                self._lost(worker, "re-registered while running a job")
            self._add_idle(identity)
            if "limits:weak" in message.capabilities:
                self._warn_weak(sender)
        elif message.op == "heartbeat":
            if worker is None:
                # We restarted, or dropped it for silence: take it back (busy until it sends a result).
                self.workers[identity] = _Worker(identity, self._expiry())
                if not message.info.get("busy", False):
                    self.idle[identity] = None
        elif message.op == "stop":
            if worker is not None:
                self._remove(worker, "said stop")
        else:
            self.drops.drop(f"unexpected control op {message.op!r}", sender, message.op)

    def _warn_weak(self, sender: str) -> None:
        executor = sender.split("/", 1)[0]
        if executor not in self.weak_executors and len(self.weak_executors) < 10_000:
            self.weak_executors.add(executor)
            log.warning("executor %s runs with WEAK LIMITS (executor.allow_weak_limits): its tests' CPU time and "
                        "memory are bounded per process only", printable(executor))

    def _on_result(self, identity: bytes, worker: _Worker | None, result: ExecutionResult) -> None:
        job = self.jobs.get(result.job_id)
        if job is None:
            m.BROKER_JOBS.labels("duplicate_result").inc()
        else:
            if job.worker is not None and job.worker != identity and job.worker in self.workers:
                self.workers[job.worker].job_id = None  # the other copy's result will be a duplicate
            self._reply(job, result.replace(attempts=max(1, job.attempts)), "completed")
        if worker is not None:
            worker.job_id = None
        self._add_idle(identity)

    def _add_idle(self, identity: bytes) -> None:
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = _Worker(identity, self._expiry())
        worker.job_id = None
        self.idle[identity] = None
        self.idle.move_to_end(identity)

    def _expiry(self) -> float:
        return time.monotonic() + self.config.heartbeat_interval_s * self.config.heartbeat_liveness

    def _remove(self, worker: _Worker, why: str) -> None:
        self.workers.pop(worker.identity, None)
        self.idle.pop(worker.identity, None)
        if worker.job_id is not None:
            self._lost(worker, why)

    def _lost(self, worker: _Worker, why: str) -> None:
        """The job on ``worker`` will never be answered by it: requeue it, or give up after max_retries."""
        job = self.jobs.get(worker.job_id) if worker.job_id else None
        worker.job_id = None
        if job is None or job.worker != worker.identity:
            return
        job.worker = None
        if job.attempts > self.config.max_retries:
            log.warning("job %s lost on %d workers (last: %s); giving up", job.job_id, job.attempts, why)
            result = failed_result(
                job.job_id, f"executor worker failed {job.attempts} times ({why}); gave up after executor.max_retries={self.config.max_retries}",
                tests_total=0, attempts=job.attempts,
            )
            self._reply(job, result, "failed")
            return
        log.info("job %s requeued: worker %s %s", job.job_id, worker.identity.decode(errors="replace"), why)
        m.RETRIES.inc()
        job.queued_at = time.monotonic()
        self.queue.appendleft(job.job_id)

    def _beat(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.expiry < now:
                m.WORKERS_LOST.inc()
                self._remove(worker, "went silent")
                continue
            try:
                self.backend.send_multipart([worker.identity, self._heartbeat], zmq.NOBLOCK)
            except zmq.ZMQError:
                self._remove(worker, "is unreachable")
        beat()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            job = self.jobs.get(self.queue.popleft())
            if job is None or job.worker is not None:
                continue  # answered meanwhile, or already running elsewhere
            identity, _ = self.idle.popitem(last=False)
            worker = self.workers.get(identity)
            if worker is None:
                self.queue.appendleft(job.job_id)
                continue
            try:
                self.backend.send_multipart([identity, job.frame], zmq.NOBLOCK)
            except zmq.ZMQError:
                # Disconnected without a word: forget it and try the next worker (no attempt spent).
                self._remove(worker, "is unreachable")
                self.queue.appendleft(job.job_id)
                continue
            job.attempts += 1
            job.worker = identity
            worker.job_id = job.job_id
            m.BROKER_WAIT.observe(time.monotonic() - job.queued_at)

    def _gauges(self) -> None:
        running = sum(1 for w in self.workers.values() if w.job_id is not None)
        m.QUEUE_DEPTH.set(len(self.jobs) - running)
        m.IN_FLIGHT.set(running)
        m.WORKERS_ALIVE.set(len(self.workers))
        m.WORKERS_IDLE.set(len(self.idle))
