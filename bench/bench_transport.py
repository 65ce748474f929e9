"""Rollout transport throughput: schema-encoded rollouts over ZeroMQ PUSH->PULL on loopback, process to process.

Each rollout is a realistic 3-turn episode of about 8 KB on the wire (a 320-token first prompt, two
130-token feedback prompts, three 220-token responses with their float32 log-probabilities). One run
pushes ``--messages`` frames from this process to a receiver process and times the receiver from its first
to its last frame. Modes, each with and without CURVE, all measured in the same run:

* ``raw``     the same encoded bytes, sender sends and receiver receives (no encode, no decode): the baseline
* ``decode``  the same bytes; the receiver decodes and fully validates each frame (``decode(frame, Rollout)``)
* ``e2e``     the sender encodes each rollout from its model object; the receiver decodes and validates

Printed: rollouts/s at the receiver (median of ``--repeats``), MB/s, the ratio to ``raw`` under the same
security (median over rounds of the ratio to the same round's raw run, robust to load that drifts between
rounds), and rollouts per CPU-second of the receiver process (its Python thread plus ZeroMQ's I/O thread):
the capacity of one receiving core, which a loaded machine distorts far less than wall-clock rates.
Targets (issue 2): >= 20,000 rollouts/s, >= 0.8 of raw.

    .venv/bin/python bench/bench_transport.py [--messages 40000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from rlef.common.config import TransportConfig
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import FinalOutcome, Rollout, Turn, TurnOutcome, encode, pack_floats, pack_ids
from rlef.common.protocol.transport import Transport, bound_port, generate_keys

MODES = ("raw", "decode", "e2e")
PROMPTS, RESPONSE = (320, 130, 130), 220


def make_rollouts(count: int, seed: int = 0) -> list[Rollout]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        turns = [
            Turn(
                prompt_ids=pack_ids(rng.integers(0, 128_256, prompt)),
                response_ids=pack_ids(rng.integers(0, 128_256, RESPONSE)),
                logprobs=pack_floats(-rng.exponential(0.5, RESPONSE)),
                policy_version=41 + turn,
                has_code=True,
                outcome=TurnOutcome(status="pass" if turn == 2 else "wrong_answer", public_passed=1 + turn // 2, public_total=2),
            )
            for turn, prompt in enumerate(PROMPTS)
        ]
        out.append(
            Rollout(
                rollout_id=f"actor-3/{index}", actor_id="actor-3", problem_id=f"codecontests/train/{1000 + index % 977}",
                turns=turns, final=FinalOutcome(passed=True, status="pass", tests_passed=12, tests_total=12),
                rewards=[0.0, 0.0, 1.0], timings={"generate_s": 4.2, "execute_s": 0.8, "episode_s": 5.3},
            )
        )
    return out


def transport_config(keys: Path | None) -> TransportConfig:
    return TransportConfig(curve_keys_dir=keys)


def receiver(conn, keys: Path | None) -> None:
    """Child process: for each (mode, count) request, bind a PULL, report its port, receive ``count`` frames."""
    with Transport(transport_config(keys)) as transport:
        while (request := conn.recv()) is not None:
            mode, count = request
            sock = transport.server(zmq.PULL, "tcp://127.0.0.1:0")
            conn.send(bound_port(sock))
            validate = mode != "raw"
            sock.recv()  # the first frame starts the clock: connection set-up is not throughput
            start, cpu_start = time.perf_counter(), time.process_time()
            received = 0
            for _ in range(count - 1):
                frame = sock.recv()
                if validate:
                    rollout = decode(frame, Rollout)
                    received += len(rollout.turns) == 3
                else:
                    received += len(frame) > 0
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            sock.close(linger=0)
            conn.send((received, elapsed, cpu))


def run_once(conn, transport: Transport, mode: str, rollouts: list[Rollout], frames: list[bytes], count: int) -> tuple[float, float]:
    """One timed run: (rollouts per wall second, rollouts per receiver CPU second) at the receiver."""
    conn.send((mode, count))
    port = conn.recv()
    sock = transport.client(zmq.PUSH, f"tcp://127.0.0.1:{port}")
    pool = len(frames)
    if mode == "e2e":
        for index in range(count):
            sock.send(encode(rollouts[index % pool]))
    else:
        for index in range(count):
            sock.send(frames[index % pool])
    received, elapsed, cpu = conn.recv()
    sock.close(linger=-1)
    if received != count - 1:
        raise RuntimeError(f"{mode}: receiver counted {received} of {count - 1} frames")
    return (count - 1) / elapsed, (count - 1) / max(cpu, 1e-9)


def measure(
    keys: Path | None, rollouts: list[Rollout], frames: list[bytes], count: int, repeats: int
) -> dict[str, tuple[float, float, float, float]]:
    """Per mode: median (wall rate, CPU rate) and the median over rounds of its (wall, CPU) ratio to the same
    round's raw run: each round runs every mode back to back, so a ratio compares runs under the same load."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(child, keys), daemon=True)
    proc.start()
    rates: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    try:
        with Transport(transport_config(keys)) as transport:
            run_once(parent, transport, "raw", rollouts, frames, min(count, 5000))  # warm-up both processes
            for _ in range(repeats):
                for mode in MODES:  # interleaved, so load changes on the shared machine hit every mode alike
                    rates[mode].append(run_once(parent, transport, mode, rollouts, frames, count))
        parent.send(None)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    raw = rates["raw"]
    return {
        mode: (
            statistics.median(v[0] for v in values),
            statistics.median(v[1] for v in values),
            statistics.median(v[0] / r[0] for v, r in zip(values, raw)),
            statistics.median(v[1] / r[1] for v, r in zip(values, raw)),
        )
        for mode, values in rates.items()
    }


def in_process_costs(rollouts: list[Rollout], frames: list[bytes]) -> dict[str, float]:
    """Microseconds per rollout of encode and decode alone, in this process (no sockets), next to msgpack's
    plain unpacking of the same frames into dicts (no validation at all) as the in-process baseline."""
    out = {}
    for name, work in (("encode", lambda i: encode(rollouts[i])), ("decode", lambda i: decode(frames[i], Rollout)),
                       ("unpack", lambda i: msgpack.unpackb(frames[i]))):
        start = time.perf_counter()
        for _ in range(5):
            for index in range(len(frames)):
                work(index)
        out[name] = (time.perf_counter() - start) / (5 * len(frames)) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40_000, help="frames per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    parser.add_argument("--pool", type=int, default=1000, help="distinct rollouts cycled through")
    args = parser.parse_args()

    rollouts = make_rollouts(args.pool)
    frames = [encode(rollout) for rollout in rollouts]
    size = statistics.mean(len(frame) for frame in frames)
    costs = in_process_costs(rollouts, frames)
    print(f"rollout frame: {size:.0f} bytes; in-process encode {costs['encode']:.1f} us, decode+validate {costs['decode']:.1f} us "
          f"({costs['decode'] / costs['unpack']:.2f}x msgpack's unvalidated unpackb: {costs['unpack']:.1f} us)")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the figures are only as quiet as the machine)")
    print(f"{'security':8s} {'mode':7s} {'rollouts/s':>11s} {'MB/s':>8s} {'vs raw':>7s} {'per rx CPU-s':>13s} {'vs raw':>7s}")
    worst = {"rate": float("inf"), "ratio": float("inf"), "cpu_ratio": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys(Path(tmp) / "keys")
        for label, key_dir in (("plain", None), ("curve", keys)):
            rates = measure(key_dir, rollouts, frames, args.messages, args.repeats)
            for mode in MODES:
                wall, cpu, wall_ratio, cpu_ratio = rates[mode]
                print(f"{label:8s} {mode:7s} {wall:11,.0f} {wall * size / 1e6:8.1f} {wall_ratio:7.2f} {cpu:13,.0f} {cpu_ratio:7.2f}")
                if mode != "raw":
                    worst = {"rate": min(worst["rate"], wall), "ratio": min(worst["ratio"], wall_ratio),
                             "cpu_ratio": min(worst["cpu_ratio"], cpu_ratio)}
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"target >= 20,000 rollouts/s: {'met' if worst['rate'] >= 20_000 else 'NOT met'} (slowest schema mode {worst['rate']:,.0f}/s); "
          f"target >= 0.8 of raw: {'met' if worst['ratio'] >= 0.8 else 'NOT met'} on wall clock (lowest {worst['ratio']:.2f}), "
          f"{'met' if worst['cpu_ratio'] >= 0.8 else 'NOT met'} per receiver CPU-second (lowest {worst['cpu_ratio']:.2f})")


if __name__ == "__main__":
    main()
