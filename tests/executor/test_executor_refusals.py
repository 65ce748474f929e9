"""Every job gets an answer: a job refused by the client, the broker or the executor comes back as a
sandbox_error result naming the field and the limit, instead of being dropped (real ZeroMQ, real processes).

Before, each of these waited out the requester's whole timeout and then said "timed out waiting for an
executor". The clients here wait far longer than any refusal takes, so an answer that is not a timeout can
only be the refusal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers.executor_service import free_port

from rlef.common.config import ExecutorConfig, TransportConfig
from rlef.common.protocol.execution_client import BUSY, REFUSED, TIMEOUT_ERROR, ExecutionClient, job_problem
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, ExecutionJob, ExecutionResult, Limits, encode
from rlef.common.protocol.messages import TestCase as Case
from rlef.common.protocol.transport import Transport
from rlef.executor.refusals import salvage_job_id

LIMITS = Limits(time_s=2.0, memory_bytes=256 << 20)
ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 20_000  # far beyond any refusal, far below the 60-120 s timeouts requesters use


def job(code: str = "print(1)", tests: list[Case] | None = None, limits: Limits = LIMITS) -> ExecutionJob:
    return ExecutionJob(job_id=uuid.uuid4().hex, code=code, tests=tests if tests is not None else [Case(input="", output="1")], limits=limits)


def receive_result(sock: zmq.Socket) -> ExecutionResult:
    assert sock.poll(WAIT_MS, zmq.POLLIN), "no answer"
    result = decode(sock.recv(), ExecutionResult)
    assert isinstance(result, ExecutionResult)
    return result


# ---------------------------------------------------------------- the client validates before it sends


@pytest.mark.parametrize(
    ("limits", "field"),
    [(Limits(time_s=0.0, memory_bytes=1 << 28), "limits.time_s"), (Limits(time_s=-1.0, memory_bytes=1 << 28), "limits.time_s"),
     (Limits(time_s=1.0, memory_bytes=0), "limits.memory_bytes")],
)
def test_client_refuses_invalid_limits_without_sending(limits: Limits, field: str) -> None:
    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="strict", timeout_s=30)
        try:
            result = client.run_sync(job(limits=limits))
        finally:
            client.close()
    assert result.error != TIMEOUT_ERROR
    assert result.error.startswith(f"{REFUSED} client") and field in result.error, result.error
    assert result.status == "sandbox_error" and client.refused == 1 and client.timeouts == 0


def test_client_refuses_a_frame_zeromq_would_drop() -> None:
    big = job(tests=[Case(input="x" * (2 << 20), output="")])
    with Transport(TransportConfig(max_message_bytes=1 << 20)) as transport:
        client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="strict", timeout_s=1.0)
        try:
            result, ok = client.run_many_sync([big, job()])
        finally:
            client.close()
    assert "transport.max_message_bytes=1048576" in result.error and result.tests_total == 1
    assert ok.error == TIMEOUT_ERROR  # the valid one was sent (and, with no broker, timed out)


def test_async_client_refuses_with_the_executor_caps() -> None:
    import asyncio

    async def main() -> ExecutionResult:
        with Transport(TransportConfig(), asyncio=True) as transport:
            client = ExecutionClient(transport, "tcp://127.0.0.1:9", client_id="strict", timeout_s=30,
                                     executor=ExecutorConfig(max_code_bytes=1000))
            try:
                return await client.run(job(code="x = 1\n" * 1000))
            finally:
                client.close()

    result = asyncio.run(main())
    assert "executor.max_code_bytes=1000" in result.error and REFUSED in result.error


def test_job_problem_names_every_cap() -> None:
    config = ExecutorConfig(max_code_bytes=10, max_tests_per_job=1, max_time_limit_s=5, max_memory_limit_bytes=1 << 20)
    assert "executor.max_code_bytes=10" in (job_problem(job(code="print(12345)"), config) or "")
    assert "executor.max_tests_per_job=1" in (job_problem(job(code="1", tests=[Case(input="", output="")] * 2), config) or "")
    assert "executor.max_time_limit_s=5" in (job_problem(job(code="1", limits=Limits(time_s=6, memory_bytes=1)), config) or "")
    assert "executor.max_memory_limit_bytes=1048576" in (
        job_problem(job(code="1", limits=Limits(time_s=1, memory_bytes=2 << 20)), config) or "")
    assert job_problem(job(code="1", limits=Limits(time_s=1, memory_bytes=1)), config) is None


# ---------------------------------------------------------------- the broker answers instead of dropping


@pytest.fixture
def raw_frontend(executor_service) -> Iterator[zmq.Socket]:
    """A bare DEALER on the broker's frontend: frames go out exactly as written, nothing validated."""
    with Transport(TransportConfig()) as transport:
        sock = transport.client(zmq.DEALER, executor_service.frontend)
        yield sock
        sock.close(0)


def test_broker_answers_a_job_that_fails_validation(raw_frontend: zmq.Socket) -> None:
    bad = job(limits=Limits(time_s=0.0, memory_bytes=1 << 28))  # Python construction does not check bounds
    raw_frontend.send(encode(bad))
    result = receive_result(raw_frontend)
    assert result.job_id == bad.job_id
    assert result.error.startswith(f"{REFUSED} broker") and "limits.time_s" in result.error, result.error


def test_broker_answers_an_unknown_schema_version(raw_frontend: zmq.Socket) -> None:
    payload = msgpack.unpackb(encode(job()))
    payload["schema"] = "rlef.execution_job/99"
    raw_frontend.send(msgpack.packb(payload))
    result = receive_result(raw_frontend)
    assert result.job_id == payload["job_id"] and "version" in result.error


def test_broker_refuses_code_over_the_executor_cap(raw_frontend: zmq.Socket) -> None:
    """Over 1 MiB the old schema bound dropped the job unanswered; now the cap (200000 here) answers."""
    big = job(code="x = 1\n" * 200_000)  # 1.2 MB
    raw_frontend.send(encode(big))
    result = receive_result(raw_frontend)
    assert result.job_id == big.job_id and "executor.max_code_bytes=200000" in result.error


def test_garbage_without_a_job_id_is_still_dropped(raw_frontend: zmq.Socket, sync_client: ExecutionClient) -> None:
    raw_frontend.send(b"\x81\xa6schema\xb5rlef.execution_job/1")  # a job without job_id: nobody to answer
    assert not raw_frontend.poll(500, zmq.POLLIN)
    assert sync_client.run_sync(job()).passed


def test_salvage_job_id() -> None:
    good = job()
    assert salvage_job_id(encode(good)) == good.job_id
    assert salvage_job_id(encode(Control(op="heartbeat", sender_id="x", role="actor"))) is None
    assert salvage_job_id(b"\xff\x00") is None
    assert salvage_job_id(msgpack.packb({"schema": "rlef.execution_job/1", "job_id": 5})) is None
    assert salvage_job_id(msgpack.packb({"schema": "rlef.execution_job/1", "job_id": "x" * 300})) is None
    assert salvage_job_id(b"\xdf\xff\xff\xff\xff") is None  # a map declaring 4 billion entries


# ---------------------------------------------------------------- the executor answers too


@pytest.fixture
def lone_executor(tmp_path: Path) -> Iterator[tuple[zmq.Socket, bytes]]:
    """A real ``rlef executor`` (default caps) connected to a ROUTER of ours standing in for the broker."""
    import subprocess
    import sys

    from helpers.processes import stop_process_groups

    port = free_port()
    with Transport(TransportConfig()) as transport:
        backend = transport.server(zmq.ROUTER, f"tcp://127.0.0.1:{port}")
        log = open(tmp_path / "executor.log", "wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("rlef")), "executor", "--config", str(ROOT / "configs/tiny-cpu.yaml"),
             f"endpoints.broker_backend_port={port}", "executor.workers=1", "executor.metrics_port=0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )
        log.close()
        try:
            assert backend.poll(60_000, zmq.POLLIN), (tmp_path / "executor.log").read_text()
            identity, frame = backend.recv_multipart()
            assert decode(frame, Control).op == "register"
            yield backend, identity
        finally:
            stop_process_groups([proc], timeout_s=5)
            backend.close(0)


def _next_result(backend: zmq.Socket) -> ExecutionResult:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        assert backend.poll(WAIT_MS, zmq.POLLIN), "no answer from the executor"
        _, frame = backend.recv_multipart()
        message = decode(frame, (ExecutionResult, Control))
        if isinstance(message, ExecutionResult):
            return message
    raise AssertionError("no result from the executor")


@pytest.mark.slow
def test_executor_answers_what_it_cannot_decode_and_its_own_caps(lone_executor: tuple[zmq.Socket, bytes]) -> None:
    backend, worker = lone_executor
    bad = job(limits=Limits(time_s=-1.0, memory_bytes=1 << 28))
    backend.send_multipart([worker, encode(bad)])
    result = _next_result(backend)
    assert result.job_id == bad.job_id and result.error.startswith(f"{REFUSED} executor") and "limits.time_s" in result.error
    # The executor's own max_code_bytes (default 1 MiB), unreachable before: the wire bound was 1 MiB too.
    big = job(code="x = 1\n" * 250_000)  # 1.5 MB
    backend.send_multipart([worker, encode(big)])
    result = _next_result(backend)
    assert result.job_id == big.job_id and f"executor.max_code_bytes={1 << 20}" in result.error
    fine = job()
    backend.send_multipart([worker, encode(fine)])
    assert _next_result(backend).passed


# ---------------------------------------------------------------- a full queue answers "busy"


def test_broker_queue_is_bounded_and_answers_busy_beyond_it() -> None:
    """With no worker, the first ``broker_max_queued_jobs`` jobs wait; every further one is answered at once
    with a resendable busy error (not a refusal), and the waiting ones still go to the first worker."""
    from rlef.executor.broker import Broker

    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with Transport(TransportConfig()) as transport:
        broker = Broker(transport, frontend, backend, ExecutorConfig(broker_max_queued_jobs=2))
        thread = threading.Thread(target=broker.run, daemon=True)
        thread.start()
        requester = transport.client(zmq.DEALER, frontend)
        jobs = [job() for _ in range(5)]
        for j in jobs:
            requester.send(encode(j))
        busy = [receive_result(requester) for _ in range(3)]
        assert sorted(r.job_id for r in busy) == sorted(j.job_id for j in jobs[2:])
        for r in busy:
            assert r.status == "sandbox_error" and r.error.startswith(BUSY) and not r.error.startswith(REFUSED)
            assert "2 jobs queued (executor.broker_max_queued_jobs=2)" in r.error, r.error
        assert not requester.poll(300, zmq.POLLIN)  # the two queued jobs wait for a worker, unanswered

        worker = transport.client(zmq.DEALER, backend, identity=b"ex/0")
        worker.send(encode(Control(op="register", sender_id="ex/0", role="executor")))
        received = []
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            if worker.poll(200, zmq.POLLIN):
                message = decode(worker.recv(), (ExecutionJob, Control))
                if isinstance(message, ExecutionJob):
                    received.append(message.job_id)
        assert received == [jobs[0].job_id]
        broker.stop()
        thread.join(5)
        broker.close()
        requester.close(0)
        worker.close(0)
