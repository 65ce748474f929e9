"""Fuzzing the learner hub's bound sockets (issue 11 item 9): a real learner process (``rlef learner``, one
rank, the tiny 2-layer Llama; a batch it never fills, so it only serves) gets 10,000 random and mutated
frames (tests/helpers/fuzz.py) on each of its rollout PULL, control ROUTER and weights ROUTER, and 10,000
HTTP requests on its /metrics endpoint; the actor's weights relay ROUTER (a real ZmqReceiver in this
process, fed by that hub) gets the same. Each time: the process lives, its RSS grows by less than
``RSS_GROWTH`` (anonymous memory: libraries paged in are not growth), its log by no more lines than
its rate-limited warnings allow (``allowed_log_lines``: 10 a minute), the reject counter moves by exactly the frames the
wire schema and the hub's rules refuse (worked out here, frame by frame, with the same decode the hub uses
and, for rollouts, an offline RolloutBuffer), and a real peer afterwards still gets its answer.

Fixed seed ``SEED``: a failure names it and the case (``Case.describe``), which ``zmq_cases`` rebuilds.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
import zmq
from helpers.fuzz import (STARVED_S, Case, Watch, allowed_log_lines, anon_rss_bytes, assert_metrics_endpoint_survives,
                         http_cases, scrape, send_cases, settled_rss, wait_until, wire_seeds, zmq_cases)
from helpers.processes import stable_free_ports, stop_process_groups
from helpers.rollouts import make_rollout

from rlef.common.config import load_config
from rlef.common.protocol.config_digest import shared_config_digests
from rlef.common.protocol.control_client import ControlClient
from rlef.common.errors import MessageError
from rlef.common.protocol.base import MAX_FRAME_BYTES as MAX_FRAME
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Control, Rollout, WeightsChunk, WeightsRequest, encode
from rlef.common.protocol.transport import Transport
from rlef.common.weights.zmq.receiver import ZmqReceiver
from rlef.learner.buffer import REASONS, RolloutBuffer

ROOT = Path(__file__).resolve().parents[2]
RLEF = str(Path(sys.executable).with_name("rlef"))
SEED = 20261201
FRAMES = 10_000
VOCAB = 97  # learner_model_dir
MAX_SEQ_LEN = 128
CHUNK_BYTES = 16 << 10
RSS_GROWTH = 50 << 20
CONTROL_MAX_FRAME = 64 << 10  # rlef.common.protocol.base.MAX_CONTROL_FRAME_BYTES
WEIGHTS_MAX_FRAME = 4096  # ZmqPublisher._handle, ZmqReceiver._serve_peers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Learner:
    proc: subprocess.Popen
    config_path: Path
    log_path: Path
    metrics_port: int

    @property
    def config(self):
        return load_config(self.config_path)

    def endpoint(self, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"

    def metric(self, name: str) -> float:
        return scrape(self.metrics_port).get(name, 0.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def before(learner: Learner) -> Watch:
    """The learner's RSS, log length and metrics when a test starts sending (helpers.fuzz.Watch)."""
    return Watch("learner", learner.proc.pid, learner.log_path, learner.metrics_port, alive=learner.alive,
                 logs=learner.log_tail, seed=SEED, rss_growth=RSS_GROWTH)


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory, learner_model_dir: Path):
    tmp = tmp_path_factory.mktemp("learner-fuzz")
    rollout, weights, control, metrics = stable_free_ports(4)
    config = {
        "run": {"name": "fuzz", "output_dir": str(tmp / "runs"), "seed": 1},
        "model": {"path": str(learner_model_dir), "max_seq_len": MAX_SEQ_LEN},
        # A batch it never gathers: the hub only serves (valid fuzz rollouts wait in its buffer).
        "learner": {"batch_rollouts": 100_000, "updates_per_batch": 1, "micro_batch_tokens": 256, "total_updates": 10,
                    "metrics_port": metrics, "checkpoint": {"every_batches": 1000}},
        "staleness": {"max_async_level": 4},
        "endpoints": {"rollout_port": rollout, "weights_port": weights, "control_port": control},
        "weights": {"type": "zmq", "chunk_bytes": CHUNK_BYTES, "poll_interval_s": 0.2},
        "monitoring": {"metrics_log_interval_s": 3600},
    }
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "learner.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([RLEF, "learner", "--config", str(config_path)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    learner = Learner(proc, config_path, log_path, metrics)

    def published() -> bool:
        if not learner.alive():
            raise AssertionError(f"learner exited with {proc.returncode}:\n{learner.log_tail()}")
        try:
            return learner.metric('rlef_learner_weights_version{transport="zmq"}') == 0.0
        except OSError:
            return False

    try:
        wait_until(published, 2 * STARVED_S, learner.log_tail, poll_s=0.5)
        ready = anon_rss_bytes(proc.pid)
        warm_up(learner)
        print(f"learner ready at {ready / 2**20:.0f} MiB anonymous RSS; after the warm-up "
              f"{anon_rss_bytes(proc.pid) / 2**20:.0f} MiB (RSS settled at {settled_rss(proc.pid) / 2**20:.0f} MiB)")
        yield learner
    finally:
        stop_process_groups([proc], timeout_s=10)


def warm_up(learner: Learner) -> None:
    """1,000 cases of another seed on each hub socket, every one processed, before any test measures: a
    learner that has just published version 0 still allocates for a few seconds (its anonymous RSS went from
    208 to 271 MiB in 3 s without any traffic), and the first bad frames warm what runs once (decoders'
    diagnostic paths, regexes): these 3,000 cases added 15 MiB, the 10,000 of a test afterwards 0-2 MiB.
    Rollouts that would be accepted are left out: they would be duplicates for the tests' offline buffer."""
    warm = [c for c in zmq_cases(wire_seeds(VOCAB), 1000, SEED + 1)
            if not any(_decodes(p, Rollout, MAX_FRAME) for p in c.parts)]
    ep = learner.config.endpoints
    counters = {"rlef_learner_rollouts_received_total": sum(len(c.parts) for c in warm),
                "rlef_learner_control_bad_messages_total": sum(control_bad(c) for c in warm),
                'rlef_learner_weights_bad_messages_total{transport="zmq"}': sum(weights_bad(c, 0, 1 << 30) for c in warm)}
    start = scrape(learner.metrics_port)
    with Transport(learner.config.transport) as transport:
        # Held until everything arrived: a socket garbage-collected with frames still queued drops them.
        socks = [transport.client(kind, learner.endpoint(port)) for kind, port in
                 ((zmq.PUSH, ep.rollout_port), (zmq.DEALER, ep.control_port), (zmq.DEALER, ep.weights_port))]
        for sock in socks:
            send_cases(sock, warm, SEED + 1, alive=learner.alive)
        for name, n in counters.items():
            wait_until(lambda: learner.metric(name) - start.get(name, 0) >= n, STARVED_S,
                       lambda: f"warm-up: {name} moved by {learner.metric(name) - start.get(name, 0)} of {n}")


@pytest.fixture()
def transport(learner: Learner):
    with Transport(learner.config.transport) as t:
        yield t


def cases() -> list[Case]:
    return zmq_cases(wire_seeds(VOCAB), FRAMES, SEED)


def _decodes(frame: bytes, kind, max_frame: int):
    try:
        return decode(frame, kind, max_frame=max_frame)
    except MessageError:
        return None


def test_rollout_pull_survives_fuzzing(learner: Learner, transport: Transport) -> None:
    all_cases = cases()
    oracle = RolloutBuffer(VOCAB, MAX_SEQ_LEN, 4)  # the hub's rules at version 0, no spool
    parts = [part for case in all_cases for part in case.parts]  # PULL hands each part over as a frame
    for part in parts:
        oracle.offer(part)
    start = before(learner)
    sock = transport.client(zmq.PUSH, learner.endpoint(learner.config.endpoints.rollout_port))
    seconds = send_cases(sock, all_cases, SEED, alive=learner.alive)
    received = 'rlef_learner_rollouts_received_total'
    wait_until(lambda: learner.metric(received) - start.metrics.get(received, 0) >= len(parts), STARVED_S,
               lambda: f"received {learner.metric(received) - start.metrics.get(received, 0)} of {len(parts)} frames")
    processed = start.seconds()
    after = scrape(learner.metrics_port)
    rejected = {r: after.get(f'rlef_learner_rollouts_rejected_total{{reason="{r}"}}', 0)
                - start.metrics.get(f'rlef_learner_rollouts_rejected_total{{reason="{r}"}}', 0) for r in REASONS}
    assert after[received] - start.metrics.get(received, 0) == len(parts)
    assert {r: n for r, n in rejected.items() if n} == dict(oracle.rejected), f"seed {SEED}"
    buffered = 'rlef_learner_buffer_rollouts'
    assert after[buffered] - start.metrics.get(buffered, 0) == len(oracle), f"seed {SEED}"
    print(f"rollouts: {len(all_cases)} cases ({len(parts)} frames) sent in {seconds:.1f} s, processed in {processed:.1f} s; rejected {dict(oracle.rejected)}, "
          f"accepted {len(oracle)}")

    # A real rollout afterwards is taken.
    sock.send(encode(make_rollout(VOCAB, seed=SEED, rollout_id="after-the-fuzz", max_prompt=20, max_response=12)))
    wait_until(lambda: learner.metric(buffered) == after[buffered] + 1, STARVED_S, lambda: f"not buffered:\n{learner.log_tail()}")
    assert sum(learner.metric(f'rlef_learner_rollouts_rejected_total{{reason="{r}"}}') for r in REASONS) == \
        sum(after.get(f'rlef_learner_rollouts_rejected_total{{reason="{r}"}}', 0) for r in REASONS)
    sock.close(0)
    start.assert_healthy("rollout PULL")


def control_bad(case: Case) -> bool:
    """What the hub's control server counts as bad (common/protocol/control_hub.py, common/protocol/router_loop.py)."""
    if len(case.parts) != 1:
        return True
    message = _decodes(case.parts[0], Control, CONTROL_MAX_FRAME)
    return message is None or message.op not in ("register", "heartbeat")


def test_control_router_survives_fuzzing(learner: Learner, transport: Transport) -> None:
    all_cases = cases()
    expected = sum(control_bad(c) for c in all_cases)
    start = before(learner)
    counter = "rlef_learner_control_bad_messages_total"
    sock = transport.client(zmq.DEALER, learner.endpoint(learner.config.endpoints.control_port))
    replies = Counter()
    seconds = send_cases(sock, all_cases, SEED, alive=learner.alive, on_reply=lambda r: replies.update([len(r)]))
    wait_until(lambda: learner.metric(counter) - start.metrics.get(counter, 0) >= expected, STARVED_S,
               lambda: f"{learner.metric(counter) - start.metrics.get(counter, 0)} of {expected} bad control messages counted")
    processed = start.seconds()
    time.sleep(0.5)  # nothing more may come
    assert learner.metric(counter) - start.metrics.get(counter, 0) == expected, f"seed {SEED}"
    print(f"control: {len(all_cases)} cases sent in {seconds:.1f} s, processed in {processed:.1f} s, {expected} bad, {sum(replies.values())} replies")
    sock.close(0)

    with ControlClient(transport, learner.endpoint(learner.config.endpoints.control_port), "after-the-fuzz",
                       heartbeat_interval_s=0.2, config_digests=shared_config_digests(learner.config)) as peer:
        assert peer.register(["rollouts"], timeout_s=STARVED_S) == 0
    start.assert_healthy("control ROUTER", limiters=2)  # bad messages, refused registrations


def weights_bad(case: Case, version: int, num_chunks: int) -> bool:
    """What the hub's weights publisher counts as bad (ZmqPublisher._handle)."""
    if len(case.parts) != 1:
        return True
    request = _decodes(case.parts[0], WeightsRequest, WEIGHTS_MAX_FRAME)
    if request is None:
        return True
    return request.op == "fetch" and request.version == version and request.index >= num_chunks


def receive_version_0(transport: Transport, learner: Learner, name: str, timeout_s: float = STARVED_S):
    """A relaying receiver as an actor builds it (weights.relay is on by default) gets version 0."""
    receiver = ZmqReceiver(transport, learner.endpoint(learner.config.endpoints.weights_port), name, poll_interval_s=0.2,
                           relay_bind="tcp://127.0.0.1:0", relay_host="127.0.0.1")
    got = receiver.poll(timeout_s)
    assert got is not None and got.version == 0, f"{name} got no weights (seed {SEED}):\n{learner.log_tail()}"
    return receiver, got


def test_weights_router_survives_fuzzing(learner: Learner, transport: Transport) -> None:
    baseline, weights = receive_version_0(transport, learner, "baseline")
    num_chunks = math.ceil(weights.nbytes / CHUNK_BYTES)
    all_cases = cases()
    expected = sum(weights_bad(c, 0, num_chunks) for c in all_cases)
    start = before(learner)
    counter = 'rlef_learner_weights_bad_messages_total{transport="zmq"}'
    sock = transport.client(zmq.DEALER, learner.endpoint(learner.config.endpoints.weights_port))
    seconds = send_cases(sock, all_cases, SEED, alive=learner.alive)
    wait_until(lambda: learner.metric(counter) - start.metrics.get(counter, 0) >= expected, STARVED_S,
               lambda: f"{learner.metric(counter) - start.metrics.get(counter, 0)} of {expected} bad weights requests counted")
    processed = start.seconds()
    time.sleep(0.5)
    assert learner.metric(counter) - start.metrics.get(counter, 0) == expected, f"seed {SEED}"
    print(f"weights: {len(all_cases)} cases sent in {seconds:.1f} s, processed in {processed:.1f} s, {expected} bad ({num_chunks} chunks)")

    # A new relaying receiver afterwards gets the same version 0, whatever relay endpoints the fuzz left in
    # the hub's chain (its predecessor may be one: an endpoint nothing listens on, reported dead).
    late, again = receive_version_0(transport, learner, "after-the-fuzz")
    assert again.checksum == weights.checksum
    for r in (late, baseline):
        r.close()
    sock.close(0)
    start.assert_healthy("weights ROUTER")


def test_actor_relay_router_survives_fuzzing(learner: Learner, transport: Transport, caplog) -> None:
    """The actor role's one bound socket: its weights relay (a real ZmqReceiver in this process)."""
    relay, weights = receive_version_0(transport, learner, "relay")
    all_cases = cases()
    expected = sum(len(c.parts) != 1 or _decodes(c.parts[0], WeightsRequest, WEIGHTS_MAX_FRAME) is None for c in all_cases)
    anon0, t0 = anon_rss_bytes(os.getpid()), time.monotonic()
    bad0 = relay.bad_messages
    sock = transport.client(zmq.DEALER, relay.relay_endpoint)
    with caplog.at_level(logging.INFO, logger="rlef.common.weights"):
        seconds = send_cases(sock, all_cases, SEED)
        wait_until(lambda: relay.bad_messages - bad0 >= expected, STARVED_S,
                   lambda: f"{relay.bad_messages - bad0} of {expected} bad relay requests counted")
        processed = time.monotonic() - t0
        time.sleep(0.5)
        assert relay.bad_messages - bad0 == expected, f"seed {SEED}"
        sock.close(0)
        # A peer afterwards fetches chunk 0 of version 0 from the relay: the bytes the hub serves.
        fetched = {}
        for name, endpoint in (("relay", relay.relay_endpoint),
                               ("hub", learner.endpoint(learner.config.endpoints.weights_port))):
            peer = transport.client(zmq.DEALER, endpoint)
            peer.send(encode(WeightsRequest(op="fetch", receiver_id="peer", version=0, index=0)))
            assert peer.poll(int(STARVED_S * 1000)), f"the {name} did not answer a fetch after the fuzz (seed {SEED})"
            header, data = peer.recv_multipart()
            assert decode(header, WeightsChunk) == WeightsChunk(version=0, index=0)
            fetched[name] = data
            peer.close(0)
        assert fetched["relay"] == fetched["hub"] and len(fetched["relay"]) == min(CHUNK_BYTES, weights.nbytes)
        # Valid fetches of versions nobody publishes (a confused or hostile peer): they fill the relay's bounded
        # queue of waiting fetches, and are forgotten (they stayed for ever: real peers' fetches of chunks still
        # on their way were then ignored).
        flood = transport.client(zmq.DEALER, relay.relay_endpoint)
        for i in range(5000):
            flood.send(encode(WeightsRequest(op="fetch", receiver_id="flood", version=10**6 + i, index=0)))
        wait_until(lambda: relay._pending_count >= 1000, STARVED_S, lambda: f"{relay._pending_count} fetches queued")
        wait_until(lambda: relay._pending_count == 0, 2 * relay.relay_stall_s + STARVED_S,
                   lambda: f"{relay._pending_count} fetches still queued (seed {SEED})")
        flood.close(0)
    lines = [r for r in caplog.records if r.name.startswith("rlef.common.weights")]
    assert len(lines) <= allowed_log_lines(time.monotonic() - t0), [r.getMessage()[:200] for r in lines]
    growth = anon_rss_bytes(os.getpid()) - anon0
    assert growth < RSS_GROWTH, f"anonymous RSS of the relaying process grew by {growth / 2**20:.1f} MiB (seed {SEED})"
    print(f"relay: {len(all_cases)} cases sent in {seconds:.1f} s, processed in {processed:.1f} s, {expected} bad, "
          f"{len(lines)} log lines, anonymous RSS of this (test) process {growth / 2**20:+.1f} MiB")
    relay.close()


def test_metrics_endpoint_survives_fuzzing(learner: Learner) -> None:
    all_cases = http_cases(FRAMES, SEED)
    start = before(learner)
    after = assert_metrics_endpoint_survives(start, all_cases, SEED)
    assert after['rlef_learner_weights_version{transport="zmq"}'] == 0.0  # a real scrape afterwards
    start.assert_healthy("metrics HTTP")
