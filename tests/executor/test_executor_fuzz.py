"""Fuzzing the executor broker's bound sockets (issue 11 item 9): a real ``rlef executor-broker`` with one real
``rlef executor`` behind it gets 10,000 random and mutated frames (tests/helpers/fuzz.py) on its frontend
ROUTER (from a requester that never reads its answers), 10,000 on its backend ROUTER (as a worker), and
10,000 HTTP requests on its /metrics endpoint. Each time: the broker lives, its RSS grows by less than
``RSS_GROWTH`` (anonymous memory), its log by no more lines than its rate-limited warnings allow
(``allowed_log_lines``: 10 a minute), ``rlef_executor_bad_messages_total{process="broker"}``
moves by exactly the frames the wire schema and the broker's rules refuse (worked out here frame by frame
with the decode the broker uses), and a real job afterwards still passes.

Fixed seed ``SEED``: a failure names it and the case (``Case.describe``), which ``zmq_cases`` rebuilds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import zmq
from helpers.executor_service import ROOT, ExecutorService, start_executor_service, two_free_ports
from helpers.fuzz import (STARVED_S, Case, Watch, assert_metrics_endpoint_survives, http_cases, scrape, send_cases,
                         settled_rss, wait_until, wire_seeds, zmq_cases)

from rlef.common.config import TransportConfig, load_config
from rlef.common.errors import MessageError
from rlef.common.protocol.execution_client import ExecutionClient, job_problem
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, ExecutionJob, ExecutionResult, Limits, encode
from rlef.common.protocol.messages import TestCase as Case_  # aliased: pytest would collect Test* names
from rlef.common.protocol.transport import Transport

SEED = 20261202
FRAMES = 10_000
RSS_GROWTH = 50 << 20
BAD = 'rlef_executor_bad_messages_total{process="broker"}'

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]



@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExecutorService, int]]:
    port = two_free_ports()
    overrides = [f"executor.metrics_port={port}", "executor.heartbeat_interval_s=0.5"]
    with start_executor_service(tmp_path_factory.mktemp("broker-fuzz"), workers=1, overrides=overrides,
                                ready_timeout_s=STARVED_S) as service:
        assert service.broker is not None
        print(f"broker ready, RSS settled at {settled_rss(service.broker.pid) / 2**20:.0f} MiB")
        yield service, port - 1


def broker_watch(service: ExecutorService, metrics_port: int) -> Watch:
    """The broker's RSS, log length and metrics when the fuzzing starts (helpers.fuzz.Watch)."""
    assert service.broker is not None
    log = service.log_dir / "broker.log"
    started = Watch("broker", service.broker.pid, log, metrics_port, logs=service.logs, seed=SEED, rss_growth=RSS_GROWTH,
                    alive=lambda: service.broker is not None and service.broker.poll() is None)
    assert started.lines > 0, f"{log} is empty: the broker logs elsewhere and the log checks would be vacuous"
    return started


def assert_a_real_job_passes(service: ExecutorService) -> None:
    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, service.frontend, client_id="after-the-fuzz", timeout_s=STARVED_S)
        try:
            job = ExecutionJob(job_id=f"after-{uuid.uuid4().hex}", code="print(input())",
                               tests=[Case_(input="ok", output="ok")], limits=Limits(time_s=5, memory_bytes=1 << 28))
            result = client.run_sync(job)
        finally:
            client.close()
    assert result.passed, (result, service.logs())


def _decoded(case: Case, kinds):
    if len(case.parts) != 1:
        return None
    try:
        return decode(case.parts[0], kinds)
    except MessageError:
        return None


def test_frontend_survives_fuzzing(service) -> None:
    service, metrics_port = service
    executor = load_config(ROOT / "configs/tiny-cpu.yaml", service.overrides).executor
    cases = zmq_cases(wire_seeds(), FRAMES, SEED)
    bad = jobs = refused = 0
    for case in cases:
        job = _decoded(case, ExecutionJob)
        if job is None:
            bad += 1  # undecodable, or not exactly identity + message (Broker._drain, _on_frontend)
        elif job_problem(job, executor) is not None:
            refused += 1
        else:
            jobs += 1  # queued, or dropped as a duplicate job_id if one like it is still queued or running
    watch = broker_watch(service, metrics_port)
    received = 'rlef_executor_broker_jobs_total{outcome="received"}'
    with Transport(TransportConfig()) as transport:
        # A requester that never reads its answers (refusals of frames with a readable job_id, results).
        sock = transport.client(zmq.DEALER, service.frontend, rcvhwm=1, rcvbuf=4096)
        seconds = send_cases(sock, cases, SEED, alive=watch.alive, read_replies=False)
        wait_until(lambda: watch.delta(BAD) + watch.delta(received) >= bad + jobs, STARVED_S,
                   lambda: f"counted {watch.delta(BAD)} bad + {watch.delta(received)} received of {bad} + {jobs}")
        processed = time.monotonic() - watch.started
        time.sleep(0.5)
        assert watch.delta(BAD) + watch.delta(received) == bad + jobs, f"seed {SEED}"
        assert bad <= watch.delta(BAD) <= bad + jobs, f"seed {SEED}"
        sock.close(0)
        queued = watch.delta(received)
        # And requesters that leave at once: 40 real jobs whose results have nobody to go to (a line each
        # in the broker's log before the log budget).
        leaver = transport.client(zmq.DEALER, service.frontend)
        for i in range(40):
            leaver.send(encode(ExecutionJob(job_id=f"leaver-{SEED}-{i}", code="print(1)", tests=[Case_(input="", output="1")],
                                            limits=Limits(time_s=5, memory_bytes=1 << 28))))
        leaver.close(linger=int(STARVED_S * 1000))
        gone_name = 'rlef_executor_broker_jobs_total{outcome="requester_gone"}'
        wait_until(lambda: watch.delta(gone_name) >= 40, STARVED_S,
                   lambda: f"{watch.delta(gone_name)} of the 40 results found their requester gone")
    answered = watch.delta('rlef_executor_broker_jobs_total{outcome="refused"}')
    gone = watch.delta(gone_name)
    print(f"frontend: {len(cases)} cases sent in {seconds:.1f} s, processed in {processed:.1f} s: {bad} bad, {refused} "
          f"over the caps, {jobs} jobs ({queued:.0f} queued); refusals delivered {answered:.0f}, "
          f"answers not delivered {gone:.0f}")
    assert_a_real_job_passes(service)
    watch.assert_healthy("broker frontend", limiters=2)  # drops, and answers not delivered


def backend_bad(case: Case) -> bool:
    """What the broker counts as bad from a worker (Broker._drain, _on_backend)."""
    message = _decoded(case, (ExecutionResult, Control))
    return message is None or isinstance(message, Control) and message.op not in ("register", "heartbeat", "stop")


def test_backend_survives_fuzzing(service) -> None:
    service, metrics_port = service
    cases = zmq_cases(wire_seeds(), FRAMES, SEED + 1)
    bad = sum(backend_bad(c) for c in cases)
    watch = broker_watch(service, metrics_port)
    backend = service.frontend.rsplit(":", 1)[0] + ":" + next(
        o.split("=", 1)[1] for o in service.overrides if o.startswith("endpoints.broker_backend_port="))
    with Transport(TransportConfig()) as transport:
        # A "worker" that registers (some mutations are valid registrations and heartbeats) and gets jobs it
        # never answers; the broker's heartbeats to it are read and dropped.
        sock = transport.client(zmq.DEALER, backend)
        seconds = send_cases(sock, cases, SEED + 1, alive=watch.alive)
        wait_until(lambda: watch.delta(BAD) >= bad, STARVED_S, lambda: f"counted {watch.delta(BAD)} of {bad} bad")
        processed = time.monotonic() - watch.started
        time.sleep(0.5)
        assert watch.delta(BAD) == bad, f"seed {SEED + 1}"
        sock.close(0)
    print(f"backend: {len(cases)} cases sent in {seconds:.1f} s, processed in {processed:.1f} s: {bad} bad")
    assert_a_real_job_passes(service)  # the real executor's worker still gets it (the fake one is gone)
    watch.assert_healthy("broker backend")


def test_metrics_endpoint_survives_fuzzing(service) -> None:
    service, metrics_port = service
    cases = http_cases(FRAMES, SEED)
    watch = broker_watch(service, metrics_port)
    assert_metrics_endpoint_survives(watch, cases, SEED)
    assert scrape(metrics_port)["rlef_executor_broker_workers_alive"] >= 1  # a real scrape afterwards
    watch.assert_healthy("broker metrics HTTP")
