"""The /metrics endpoint every role serves (rlef.monitoring.metrics.start_metrics_server) under requests
that are not a scrape: found by fuzzing it (tests/learner/test_learner_fuzz.py, tests/executor/test_executor_fuzz.py),
prometheus_client's server answered ``Accept: text/plain; version=abc`` with a 500 and a 14-line traceback
on stderr, and printed a traceback for every client that hung up early: 2,000 requests wrote 1,856 lines."""

from __future__ import annotations

import socket
import time

import pytest

from rlef.monitoring import metrics as metrics_module
from rlef.monitoring.metrics import HTTP_ERRORS, start_metrics_server


def _count(cause: str) -> float:
    return HTTP_ERRORS.labels(cause)._value.get()


CAUSES = ("bad_request", "bad_accept", "busy", "timeout", "client_gone", "error")


def _wait(pred, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.1)
    return pred()


def _request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture()
def server():
    server = start_metrics_server(0, addr="127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


def test_an_accept_header_it_cannot_honour_is_a_400_not_a_traceback(server, capfd) -> None:
    before = _count("bad_accept")
    answer = _request(server.server_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain; version=abc\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert _count("bad_accept") == before + 1
    ok = _request(server.server_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain; version=1.0.0\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200 ") and b"rlef_process_metrics_http_errors_total" in ok
    assert "Traceback" not in capfd.readouterr().err


def test_unparseable_requests_and_clients_that_hang_up_are_counted_quietly(server, capfd) -> None:
    before = {c: _count(c) for c in CAUSES}
    for _ in range(50):
        assert b"Error code: 400" in _request(server.server_port, b"\x00\xffnot http at all\r\n\r\n")
        with socket.create_connection(("127.0.0.1", server.server_port)) as sock:  # asks, then leaves at once
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    # Every handler has finished (and written whatever it writes to stderr) before stderr is read.
    assert _wait(lambda: server.connections_done == 100), server.connections_done
    moved = {c: _count(c) - before[c] for c in CAUSES}
    # A client that hangs up may or may not be gone by the time its answer is written; nothing else moves.
    assert 0 <= moved.pop("client_gone") <= 50
    assert moved == {"bad_request": 50, "bad_accept": 0, "busy": 0, "timeout": 0, "error": 0}
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 12  # the log budget: 10 lines a minute, + a summary


def test_connections_over_the_cap_are_closed_at_once(server, monkeypatch) -> None:
    monkeypatch.setattr(metrics_module._Handler, "timeout", 60.0)  # none times out while the test runs
    before, done_before = _count("busy"), server.connections_done
    cap = metrics_module.HTTP_MAX_CONNECTIONS
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(cap + 8)]
    try:
        assert _wait(lambda: _count("busy") >= before + 8), _count("busy") - before
        assert _count("busy") - before == 8  # the first cap connections hold every slot
        for sock in idle[cap:]:  # closed by the server: end of stream
            sock.settimeout(30)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    # The slots come back as the idle clients leave: once every handler has ended (a request sent before
    # that may meet a full server and be closed at once, which CI saw as ENOTCONN), a scrape is served.
    assert _wait(lambda: server.connections_done == done_before + cap + 8), server.connections_done - done_before
    assert _wait(lambda: _request(server.server_port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 "))


def test_idle_connections_time_out(server, monkeypatch) -> None:
    monkeypatch.setattr(metrics_module._Handler, "timeout", 1.0)
    before = _count("timeout")
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(5)]
    try:
        assert _wait(lambda: _count("timeout") >= before + 5), _count("timeout") - before  # each freed its thread
        assert _count("timeout") - before == 5
    finally:
        for sock in idle:
            sock.close()
