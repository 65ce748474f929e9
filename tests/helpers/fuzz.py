"""Random and mutated frames for fuzzing the bound sockets of every role (issue 11 item 9), and what the
fuzz tests measure around them: a process' RSS and threads, its log's length, Prometheus counters.

Importable from any test (pytest's ``pythonpath`` holds tests/): ``from helpers.fuzz import zmq_cases``.

``zmq_cases(seeds, n, seed)`` draws ``n`` cases from ``random.Random(seed)``: random bytes (0-4 KiB, and
``large`` of about 1 MiB), random msgpack values, and mutations of the valid encoded messages in ``seeds``
(bytes flipped, truncated, extended, a field given a value of the wrong type, a container or string whose
declared length is huge, deep nesting, an unknown field, and multipart messages with extra parts). Each
case is a tuple of frames (one for all but the multipart ones); ``Case.describe()`` names it for a failure
message, so a failing case can be rebuilt from the seed and its index alone. ``http_cases`` does the same for
HTTP requests to a /metrics endpoint.

``Watch`` takes a fuzzed process' RSS, log length and metrics before a test sends, and checks them after
(``assert_healthy``); ``assert_metrics_endpoint_survives`` is the whole /metrics fuzz of any role.
"""

from __future__ import annotations

import random
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

#: How long a peer may take nothing before a fuzz test calls it hung. Far above what the work needs (seconds):
#: the tests run at nice 19 beside training jobs, where a process can get no CPU for tens of seconds.
STARVED_S = 300.0

#: Kinds of case and their share of a draw (the rest of ``n`` after ``large`` 1 MiB frames).
ZMQ_KINDS = {
    "random": 0.24, "random_msgpack": 0.08, "flip": 0.16, "truncate": 0.08, "extend": 0.08, "wrong_type": 0.12,
    "huge_length": 0.08, "deep_nesting": 0.02, "unknown_field": 0.04, "extra_parts": 0.10,
}
_WRONG_VALUES: list[object] = [
    None, True, False, 0, -1, -(2**63), 2**64 - 1, 1.5, float("nan"), float("inf"), -float("inf"), "", "x" * 300,
    "\u202e\x00", b"", b"\x00\xff", [], [1, "a", None], list(range(70)), {}, {"k": 1}, {str(i): i for i in range(70)},
]
_HUGE_HEADERS = [
    b"\xdb\xff\xff\xff\xf0",  # str 32 of ~4 GiB
    b"\xc6\xff\xff\xff\xf0",  # bin 32
    b"\xdd\xff\xff\xff\xf0",  # array 32
    b"\xdf\xff\xff\xff\xf0",  # map 32
    b"\xc9\xff\xff\xff\xf0\x01",  # ext 32
    b"\xdc\xff\xff",  # array 16 of 65535
    b"\xde\xff\xff",  # map 16 of 65535
    b"\xda\xff\xff",  # str 16 of 65535
]
_PLACEHOLDER = "\x00fuzz-placeholder\x00"


@dataclass(frozen=True)
class Case:
    index: int
    kind: str
    parts: tuple[bytes, ...]
    origin: str = ""  # the seed message a mutation started from

    def describe(self, seed: int) -> str:
        sizes = "+".join(str(len(p)) for p in self.parts)
        head = self.parts[0][:48].hex() if self.parts else ""
        return f"seed {seed} case {self.index} ({self.kind} of {self.origin or '-'}, {sizes} bytes, starts {head})"


def wire_seeds(vocab_size: int = 97) -> dict[str, bytes]:
    """One valid encoded frame of every kind of message the roles exchange (the mutations start from these;
    on a socket expecting another kind each is also "valid but unexpected")."""
    from helpers.rollouts import make_rollout

    from rlef.common.protocol.messages import (
        Control,
        ExecutionJob,
        ExecutionResult,
        Limits,
        TestCase,
        TestResult,
        TestsRef,
        WeightsChunk,
        WeightsRequest,
        WeightsSource,
        encode,
    )

    limits = Limits(time_s=2.0, memory_bytes=1 << 28)
    messages = {
        "job": ExecutionJob(job_id="fuzz-job-4f1c2b9e7d3a", code="print(input())",
                            tests=[TestCase(input="1", output="1")], limits=limits),
        "job_ref": ExecutionJob(job_id="fuzz-ref-8a2d6c1f0b4e", code="print(1)", limits=limits,
                                tests_ref=TestsRef(dataset="sample", split="train", problem_id="p1", test_set="public")),
        "result": ExecutionResult(job_id="fuzz-job-4f1c2b9e7d3a", worker_id="fuzz/1", compile_ok=True, tests_total=1,
                                  tests=[TestResult(status="pass", stdout="1", time_s=0.01)]),
        "register": Control(op="register", sender_id="fuzz", role="executor", capabilities=["limits:v2"],
                            info={"busy": False}),
        "heartbeat": Control(op="heartbeat", sender_id="fuzz", role="actor", version=0, info={"busy": True}),
        "get": WeightsRequest(op="get", receiver_id="fuzz", version=-1, relay="tcp://127.0.0.1:1"),
        "fetch": WeightsRequest(op="fetch", receiver_id="fuzz", version=0, index=0),
        "source": WeightsSource(version=0, endpoint="tcp://127.0.0.1:1"),
        "chunk": WeightsChunk(version=0, index=0, data=b"\x00" * 64),
        "rollout": make_rollout(vocab_size, seed=1, rollout_id="fuzz-rollout-5e9b", turns=2),
    }
    return {name: encode(message) for name, message in messages.items()}


def _random_value(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([rng.randrange(-(2**63), 2**63), rng.randrange(256), 2**64 - 1])
    if choice == 2:
        return rng.choice([rng.uniform(-1e9, 1e9), float("nan"), float("inf")])
    if choice == 3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(40)))
    if choice == 4:
        return rng.randbytes(rng.randrange(64))
    if choice in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {rng.choice(["schema", "op", "job_id", "version", "turns", "x"]): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(6))}


def _random_msgpack(rng: random.Random, schemas: list[str]) -> bytes:
    value = _random_value(rng)
    if rng.random() < 0.6:  # a map that names a real schema: gets past the first checks
        value = {"schema": rng.choice(schemas), **(value if isinstance(value, dict) else {"x": value})}
    return msgpack.packb(value, use_bin_type=True)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested maps and lists (the root excluded)."""
    out: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def _set(node: object, path: tuple, value: object) -> None:
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]


def _mutate_tree(rng: random.Random, frame: bytes, value_for: Callable[[random.Random], object]) -> bytes:
    tree = msgpack.unpackb(frame, raw=False)
    paths = _paths(tree)
    if paths:
        _set(tree, rng.choice(paths), value_for(rng))
    return msgpack.packb(tree, use_bin_type=True)


def _huge_length(rng: random.Random, frame: bytes) -> bytes:
    packed = _mutate_tree(rng, frame, lambda _rng: _PLACEHOLDER)
    marker = msgpack.packb(_PLACEHOLDER)
    return packed.replace(marker, rng.choice(_HUGE_HEADERS) + rng.randbytes(rng.randrange(8)), 1)


def zmq_cases(seeds: dict[str, bytes], n: int, seed: int, *, large: int = 4) -> list[Case]:
    """``n`` cases (``large`` of them ~1 MiB of random bytes), shuffled, from ``random.Random(seed)``."""
    rng = random.Random(seed)
    names = sorted(seeds)
    schemas = sorted({msgpack.unpackb(f, raw=False).get("schema", "") for f in seeds.values()} | {"rlef.unknown/1"})
    kinds = [k for k, share in ZMQ_KINDS.items() for _ in range(round(share * (n - large)))]
    kinds = (kinds + ["random"] * n)[: n - large] + ["random_large"] * large
    rng.shuffle(kinds)
    cases = []
    for index, kind in enumerate(kinds):
        origin = rng.choice(names)
        frame = seeds[origin]
        parts: tuple[bytes, ...]
        if kind == "random":
            parts, origin = (rng.randbytes(rng.randrange(4097)),), ""
        elif kind == "random_large":
            parts, origin = (rng.randbytes((1 << 20) + rng.randrange(4096)),), ""
        elif kind == "random_msgpack":
            parts, origin = (_random_msgpack(rng, schemas),), ""
        elif kind == "flip":
            data = bytearray(frame)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            parts = (bytes(data),)
        elif kind == "truncate":
            parts = (frame[: rng.randrange(len(frame))],)
        elif kind == "extend":
            parts = (frame + rng.randbytes(rng.randint(1, 64)),)
        elif kind == "wrong_type":
            parts = (_mutate_tree(rng, frame, lambda r: r.choice(_WRONG_VALUES)),)
        elif kind == "huge_length":
            parts = (_huge_length(rng, frame),)
        elif kind == "deep_nesting":
            depth = rng.choice([100, 1000, 100_000])
            parts = (_mutate_tree(rng, frame, lambda _r: _PLACEHOLDER).replace(
                msgpack.packb(_PLACEHOLDER), b"\x91" * depth + b"\xc0", 1),)
        elif kind == "unknown_field":
            tree = msgpack.unpackb(frame, raw=False)
            tree["".join(rng.choice("abcdefghij_") for _ in range(rng.randint(1, 20)))] = rng.choice(_WRONG_VALUES)
            parts = (msgpack.packb(tree, use_bin_type=True),)
        else:  # extra_parts: the message and more frames (what a REQ socket or a confused peer would send)
            extra = [rng.choice([b"", frame, rng.randbytes(rng.randrange(256))]) for _ in range(rng.randint(1, 3))]
            parts = tuple(extra + [frame] if rng.random() < 0.5 else [frame] + extra)
        cases.append(Case(index, kind, parts, origin))
    return cases


def send_cases(sock: zmq.Socket, cases: list[Case], seed: int, *, timeout_s: float = STARVED_S,
               on_reply: Callable[[list[bytes]], None] | None = None, alive: Callable[[], bool] | None = None,
               read_replies: bool = True) -> float:
    """Send every case as one multipart message as fast as the socket takes them (NOBLOCK; on EAGAIN wait
    for room), reading whatever comes back meanwhile (``on_reply``) so that replies never fill the pipe
    (``read_replies=False``: a peer that never reads).
    Every 256 cases ``alive()`` must hold, else it fails naming the window of cases sent since the last
    check. Returns the seconds it took; fails naming the case that could not be sent within ``timeout_s``."""
    start = time.monotonic()
    readable = read_replies and sock.type in (zmq.DEALER, zmq.ROUTER, zmq.PAIR)
    checked = 0

    def drain() -> None:
        while readable:
            try:
                reply = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if on_reply is not None:
                on_reply(reply)

    def check(upto: int) -> None:
        nonlocal checked
        if alive is not None and not alive():
            raise AssertionError(f"the process died after cases {checked}..{upto - 1} of seed {seed}; the first: "
                                 f"{cases[checked].describe(seed)}")
        checked = upto

    for case in cases:
        if case.index % 256 == 0:
            check(case.index)
        while True:
            try:
                sock.send_multipart(list(case.parts), zmq.NOBLOCK)
                break
            except zmq.Again:
                drain()
                if time.monotonic() - start > timeout_s:
                    raise AssertionError(f"the peer took no frame for {timeout_s} s at {case.describe(seed)}") from None
                sock.poll(10, zmq.POLLOUT)
        if case.index % 64 == 0:
            drain()
    drain()
    check(len(cases))
    return time.monotonic() - start




# ---------------------------------------------------------------- HTTP

# Scrapes filtered to one series (``name[]``) keep the thousands of valid answers cheap; every 20th base is a
# whole scrape.
_VALID_REQUESTS = [
    (b"GET /metrics?name[]=rlef_heartbeat_timestamp_seconds HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n"
     b"Connection: close\r\n\r\n"),
    (b"GET /metrics?name[]=rlef_policy_version HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0; "
     b"charset=utf-8\r\n\r\n"),
    b"GET /metrics?name[]=rlef_role_info&name[]=rlef_policy_version HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
    b"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
]
_WHOLE_SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
_HTTP_MUTATIONS = [
    b"Accept: text/plain; version=abc\r\n", b"Accept: text/plain; version=1.x.0\r\n",
    b"Accept: application/openmetrics-text; version=\r\n", b"Accept: application/openmetrics-text; version=9.9.9\r\n",
    b"Accept: application/openmetrics-text; escaping=bogus; version=1.0.0\r\n", b"Accept: ,;;=;,\r\n",
    b"Accept-Encoding: gzip;q=NaN, *\r\n", b"Content-Length: 99999999999999999999\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Host: \xff\xfe\r\n", b"X-" + b"a" * 70000 + b": b\r\n",
    b"Expect: 100-continue\r\n", b": no name\r\n", b"Folded:\r\n  continued\r\n",
]


def http_cases(n: int, seed: int) -> list[Case]:
    """``n`` HTTP requests: valid ones mutated (bytes flipped, cut, extended, odd headers, odd methods and
    paths, query strings) and random bytes (a few of ~1 MiB)."""
    rng = random.Random(seed)
    cases = []
    for index in range(n):
        base = _WHOLE_SCRAPE if rng.random() < 0.05 else rng.choice(_VALID_REQUESTS)
        head, _, _ = base.partition(b"\r\n\r\n")
        kind = rng.choice(["flip", "truncate", "extend", "header", "method", "path", "query", "random"])
        if index < 3:
            kind = "random_large"
        if kind == "flip":
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            request = bytes(data)
        elif kind == "truncate":
            request = base[: rng.randrange(len(base))]
        elif kind == "extend":
            request = base + rng.randbytes(rng.randint(1, 512))
        elif kind == "header":
            request = head + b"\r\n" + b"".join(rng.sample(_HTTP_MUTATIONS, rng.randint(1, 3))) + b"\r\n"
        elif kind == "method":
            method = rng.choice([b"POST", b"PUT", b"DELETE", b"HEAD", b"TRACE", b"CONNECT", b"PRI", b"G\x00T", b"x" * 5000])
            request = method + base[base.index(b" "):]
        elif kind == "path":
            path = rng.choice([b"/", b"/favicon.ico", b"//../../etc/passwd", b"/%00", b"/" + b"a" * 70000, b"*", b"http://x/"])
            request = base.replace(b"/metrics", path, 1)
        elif kind == "query":
            query = rng.choice([b"name[]=", b"name[]=%ff%fe", b"name[]=" + b"x" * 8000, b"%", b"&&&==", b"name[]=a&" * 500])
            request = base.replace(b"/metrics", b"/metrics?" + query, 1)
        elif kind == "random":
            request = rng.randbytes(rng.randrange(4097))
        else:
            request = rng.randbytes((1 << 20) + rng.randrange(4096))
        cases.append(Case(index, kind, (request,), "http"))
    return cases


def send_http(port: int, case: Case, *, read: bool, seed: int = -1, timeout_s: float = 60.0) -> bytes:
    """Send one request on its own connection; with ``read`` wait for the answer (or the close), else drop
    the connection at once (the server then writes to a closed socket)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(case.parts[0])
            if not read:
                return b""
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionError, OSError) as exc:  # the server may answer and close before reading it all
            if isinstance(exc, TimeoutError):
                raise AssertionError(f"no answer within {timeout_s} s to {case.describe(seed)}") from None
    return answer


def send_http_cases(port: int, cases: list[Case], seed: int, *, alive: Callable[[], bool], clients: int = 4,
                    hang_up: int = 500) -> tuple[list[bytes], float]:
    """Every case on its own connection from ``clients`` threads at once, each answer read (in case order),
    then the first ``hang_up`` cases again from clients that drop the connection without reading; checks
    ``alive()`` every 256 cases. Returns the answers and the seconds it all took."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    answers: list[bytes] = []
    with ThreadPoolExecutor(clients) as pool:
        for lo in range(0, len(cases), 256):
            if not alive():
                raise AssertionError(f"the server died after case {lo - 1} of seed {seed}; the window began with "
                                     f"{cases[max(0, lo - 256)].describe(seed)}")
            answers += pool.map(lambda c: send_http(port, c, read=True, seed=seed), cases[lo : lo + 256])
        list(pool.map(lambda c: send_http(port, c, read=False, seed=seed), cases[:hang_up]))
    if not alive():
        raise AssertionError(f"the server died after the hang-ups (cases 0..{hang_up - 1} of seed {seed})")
    return answers, time.monotonic() - start


def http_error_answer(answer: bytes) -> bool:
    """An error the HTTP server itself produced (http.server's send_error: 400, 414, 431, 501, 505; an
    HTTP/0.9 request gets the error page alone) or the 400 for an Accept header; not prometheus_client's
    405 for a method other than GET."""
    if answer.startswith(b"<!DOCTYPE HTML"):
        return True
    if not answer.startswith(b"HTTP/"):
        return False
    status = answer.split(b" ", 2)[1]
    return status.startswith((b"4", b"5")) and status != b"405"


def assert_metrics_endpoint_survives(watch: Watch, cases: list[Case], seed: int) -> dict[str, float]:
    """``cases`` (``http_cases(n, seed)``) on the /metrics endpoint of ``watch``'s process (``send_http_cases``:
    every answer read, then 500 hang-ups): every error answer seen was counted (``bad_request``,
    ``bad_accept``; one answered with silence, or to a client that hung up, may be too), and none is an
    internal error or a busy refusal. Returns the scrape taken after them."""
    answers, seconds = send_http_cases(watch.port, cases, seed, alive=watch.alive)
    errors, silent = sum(map(http_error_answer, answers)), answers.count(b"")
    time.sleep(0.5)
    after = scrape(watch.port)

    def delta(cause: str) -> float:
        name = f'rlef_process_metrics_http_errors_total{{cause="{cause}"}}'
        return after.get(name, 0.0) - watch.metrics.get(name, 0.0)

    causes = {c: delta(c) for c in ("bad_request", "bad_accept", "client_gone", "timeout", "busy", "error")}
    counted = causes["bad_request"] + causes["bad_accept"]
    # Every error answer seen was counted; one answered with silence, or to a client that hung up, may be.
    assert errors <= counted <= errors + silent + 500, (errors, silent, causes)
    assert causes["error"] == 0 and causes["busy"] == 0, causes
    print(f"metrics HTTP: {len(cases)} + 500 requests in {seconds:.1f} s, {errors} error answers, counted {causes}")
    return after


# ---------------------------------------------------------------- what is measured


def rss_bytes(pid: int) -> int:
    return _status_field(pid, "VmRSS") * 1024


def anon_rss_bytes(pid: int) -> int:
    """The anonymous part of the RSS: what the process allocated (heap, buffers), without the pages of
    shared libraries and files it maps, which it pages in as it first runs code (libtorch alone is hundreds
    of MB) and which the kernel can drop at any time."""
    return _status_field(pid, "RssAnon") * 1024


def threads(pid: int) -> int:
    return _status_field(pid, "Threads")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def settled_rss(pid: int, *, tolerance: int = 2 << 20, samples: int = 3, timeout_s: float = STARVED_S) -> int:
    """The RSS of ``pid`` once it stops moving (``samples`` readings a second apart within ``tolerance``): a
    role that has just started is still paging in and allocating, which is not what a fuzz test measures."""
    readings = [rss_bytes(pid)]
    deadline = time.monotonic() + timeout_s
    while len(readings) < samples or max(readings[-samples:]) - min(readings[-samples:]) > tolerance:
        if time.monotonic() > deadline:
            raise AssertionError(f"RSS of {pid} still moving after {timeout_s} s: {[r >> 20 for r in readings]} MiB")
        time.sleep(1.0)
        readings.append(rss_bytes(pid))
    return readings[-1]


def allowed_log_lines(seconds: float, limiters: int = 1, *, burst: int = 10, window_s: float = 60.0,
                      other: int = 5) -> int:
    """Most lines ``limiters`` rlef.common.log_limit.LogLimiters may write in ``seconds``: ``burst`` and one
    summary line per window each (a window starts with the first line after the last one ended), plus
    ``other`` lines the role writes anyway (a peer registering, a version packed)."""
    windows = 1 + int(seconds // window_s) + 1
    return limiters * windows * (burst + 1) + other


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def scrape(port: int, timeout_s: float = 60.0) -> dict[str, float]:
    """Every sample of a /metrics endpoint: ``'name{label="v",...}' -> value`` (labels as exposed)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Watch:
    """A fuzzed process (``name``, for messages) from the moment a test starts sending to it: its RSS (all
    and anonymous), its log's length and its metrics then, and the checks every fuzz test ends with.
    ``alive()`` says whether it still runs; ``logs()`` is what a failure shows; ``seed`` is named in failures."""

    def __init__(self, name: str, pid: int, log: Path, metrics_port: int, *, alive: Callable[[], bool],
                 logs: Callable[[], str], seed: int, rss_growth: int):
        self.name, self.pid, self.log, self.port = name, pid, log, metrics_port
        self.alive, self.logs, self.seed, self.rss_growth = alive, logs, seed, rss_growth
        self.rss, self.anon, self.lines = rss_bytes(pid), anon_rss_bytes(pid), line_count(log)
        self.metrics = scrape(metrics_port)
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def delta(self, name: str) -> float:
        """How far the metric ``name`` moved since the start."""
        return scrape(self.port).get(name, 0.0) - self.metrics.get(name, 0.0)

    def assert_healthy(self, what: str, limiters: int = 1) -> None:
        """Alive; anonymous RSS grown by less than ``rss_growth``; no more log lines than ``limiters`` rate
        limiters allow in the time since the start (``allowed_log_lines``)."""
        seed = self.seed
        assert self.alive(), f"{what}: the {self.name} died (seed {seed}):\n{self.logs()}"
        growth, anon = rss_bytes(self.pid) - self.rss, anon_rss_bytes(self.pid) - self.anon
        assert anon < self.rss_growth, f"{what}: anonymous RSS grew by {anon / 2**20:.1f} MiB (RSS {growth / 2**20:+.1f}; seed {seed})"
        lines, allowed = line_count(self.log) - self.lines, allowed_log_lines(self.seconds(), limiters)
        assert lines <= allowed, f"{what}: {lines} log lines, {allowed} allowed (seed {seed}):\n{self.logs()}"
        print(f"{what}: {self.seconds():.1f} s in all; RSS {growth / 2**20:+.1f} MiB (anonymous {anon / 2**20:+.1f} MiB), "
              f"{lines} log lines")


def wait_until(pred: Callable[[], bool], timeout_s: float, what: Callable[[], str], poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {what()}")
        time.sleep(poll_s)
