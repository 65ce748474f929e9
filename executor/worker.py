"""The executor process: a pool of W sandbox slots, each a Paranoid Pirate worker of the broker.

Each slot owns one :class:`Sandbox` and one DEALER socket to the broker backend, announces itself with
``Control(op="register")``, heartbeats every ``heartbeat_interval_s`` (also while busy, with
``info.busy``), runs one job at a time on a thread (the sandbox is subprocess-bound, so W threads keep W
jails busy), and sends the result back. A slot that hears nothing from the broker for ``heartbeat_liveness``
intervals reconnects under a fresh identity (a running job's result is still sent on the new socket; the
broker matches it by job_id). On shutdown every slot says ``Control(op="stop")`` so the broker requeues at
once instead of waiting for the silence.

Start-up runs the sandbox self-check: nsjail missing or failing is a SandboxError before any job is taken.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import zmq

from rlef.common.config import ExecutorConfig
from rlef.common.errors import MessageError
from rlef.common.protocol.execution_client import failed_result, refusal
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, ExecutionJob, ExecutionResult, encode
from rlef.common.protocol.transport import Transport
from rlef.executor.dropped import DropLog
from rlef.executor.jobs import execute
from rlef.executor.refusals import salvage_job_id
from rlef.executor.sandbox import Sandbox
from rlef.monitoring import metrics_executor as m
from rlef.monitoring.metrics import beat

log = logging.getLogger(__name__)


class ExecutorPool:
    """W slots connected to ``backend``; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, transport: Transport, backend: str, config: ExecutorConfig, executor_id: str):
        self.transport = transport
        self.backend = backend
        self.config = config
        self.executor_id = executor_id
        self.size = config.workers or os.cpu_count() or 1
        self.sandboxes = [Sandbox(config) for _ in range(self.size)]
        self.sandboxes[0].self_check()
        self.threads = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")
        self.drops = DropLog("executor", log)
        self._stop = asyncio.Event()
        self._connections = itertools.count()
        m.SANDBOXES.set(self.size)
        for mode in ("v1", "v2", "weak"):  # every mode present, so a dashboard can alert on weak == 1 or count them
            m.LIMITS_MODE.labels(mode=mode).set(1.0 if mode == self.sandboxes[0].limits_mode else 0.0)

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        slots = [asyncio.create_task(self._slot(i), name=f"slot-{i}") for i in range(self.size)]
        cgroups = self.sandboxes[0].cgroups
        log.info("executor %s: %d sandboxes serving %s; per-test limits: %s", self.executor_id, self.size, self.backend,
                 cgroups.description if cgroups is not None else "WEAK (per-process rlimits only)")
        await self._stop.wait()
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        for sandbox in self.sandboxes:
            sandbox.abort()  # running jobs end now; the broker has requeued them
        self.threads.shutdown(wait=True, cancel_futures=True)
        for sandbox in self.sandboxes:
            sandbox.close()

    def _connect(self, index: int) -> tuple[zmq.Socket, str]:
        # Unique even when two executors were given the same id (a ROUTER ignores a duplicate identity).
        identity = f"{self.executor_id}/{index}/{next(self._connections)}{uuid.uuid4().hex[:6]}"
        sock = self.transport.client(zmq.DEALER, self.backend, identity=identity.encode())
        return sock, identity

    def _control(self, op: str, identity: str, busy: bool = False) -> bytes:
        # The limits mode travels with every registration, so the broker can say which workers run weak.
        capabilities = [f"limits:{self.sandboxes[0].limits_mode}"]
        return encode(Control(op=op, sender_id=identity, role="executor", info={"busy": busy}, capabilities=capabilities))

    async def _slot(self, index: int) -> None:
        """One worker: (re)connect, register, then heartbeat / take jobs / send results forever."""
        interval = self.config.heartbeat_interval_s
        patience = interval * self.config.heartbeat_liveness
        job_task: asyncio.Future | None = None
        current: ExecutionJob | None = None
        while True:
            sock, identity = self._connect(index)
            await sock.send(self._control("register", identity))
            heard = time.monotonic()
            next_beat = heard + interval
            recv = asyncio.ensure_future(sock.recv())
            try:
                while True:
                    waiting = {recv} | ({job_task} if job_task else set())
                    timeout = max(0.0, next_beat - time.monotonic())
                    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    now = time.monotonic()
                    if recv in done:
                        heard = now
                        job, refused = self._parse(recv.result(), identity)
                        recv = asyncio.ensure_future(sock.recv())
                        if refused is not None:
                            await sock.send(encode(refused))
                        if job is not None:
                            if job_task is None:
                                current, job_task = job, self._start(job, index, identity)
                            else:
                                self.drops.drop(f"job {job.job_id} sent while busy", "broker", "busy")
                    if job_task is not None and job_task.done():
                        assert current is not None
                        await sock.send(encode(result_or_error(job_task, current, identity)))
                        job_task = current = None
                    if now >= next_beat:
                        await sock.send(self._control("heartbeat", identity, busy=job_task is not None))
                        next_beat = now + interval
                        beat()
                    if now - heard > patience:
                        m.WORKER_RECONNECTS.inc()
                        log.warning("slot %s: broker silent for %.1f s; reconnecting", identity, now - heard)
                        break
            except asyncio.CancelledError:
                # Tell the broker at once, so it requeues a running job now rather than after the silence.
                try:
                    sock.setsockopt(zmq.LINGER, 1000)  # let the stop message leave before the socket closes
                    sock.send(self._control("stop", identity), zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    log.info("slot %s: could not say stop: %s", identity, exc)
                raise
            finally:
                recv.cancel()
                sock.close()

    def _parse(self, frame: bytes, identity: str) -> tuple[ExecutionJob | None, ExecutionResult | None]:
        """The job in ``frame``, or the refusal to answer an undecodable job with (it still has a job_id)."""
        try:
            message = decode(frame, (ExecutionJob, Control), sender="broker")
        except MessageError as exc:
            self.drops.drop(str(exc), "broker", exc.field or exc.reason[:40])
            job_id = salvage_job_id(frame)
            if job_id is None:
                return None, None
            m.SANDBOX_ERRORS.labels("rejected").inc()
            result = refusal(job_id, "executor", str(exc))
            return None, result.replace(worker_id=identity)
        return (message if isinstance(message, ExecutionJob) else None), None

    def _start(self, job: ExecutionJob, index: int, identity: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        m.BUSY_SANDBOXES.inc()
        future = loop.run_in_executor(self.threads, execute, job, self.sandboxes[index], self.config, identity)
        future.add_done_callback(lambda _: m.BUSY_SANDBOXES.dec())
        return future


def result_or_error(future: asyncio.Future, job: ExecutionJob, identity: str) -> ExecutionResult:
    """The job's result; an unexpected exception in our code becomes a sandbox_error result, never a hang."""
    try:
        return future.result()
    except Exception as exc:  # a bug of ours must not lose the job: report it as our fault
        log.exception("job %s crashed the executor code", job.job_id)
        m.SANDBOX_ERRORS.labels("internal").inc()
        return failed_result(job.job_id, f"internal executor error: {type(exc).__name__}: {exc}", worker_id=identity, tests_total=0)
