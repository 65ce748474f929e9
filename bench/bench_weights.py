"""Benchmark of weight publishing: a ~1 GB float32 state dict to 1, 2, 4 (8, 16) receiver processes on loopback.

Same run, same bytes, same chunk size:
- raw: a ROUTER sends the payload as ``chunk_bytes`` frames (zero-copy) to each DEALER receiver, which only
  counts bytes: the ceiling ZeroMQ itself sets on this machine;
- zmq: ``ZmqPublisher`` -> ``ZmqReceiver`` without relays (credit flow, chunk frames received into the
  version buffer, xxh3 per chunk, whole version): every receiver fetches from the hub;
- relay: the same with every receiver relaying (the hub's chain: it sends one copy, peers pass it on);
- collective: ``CollectivePublisher`` -> ``CollectiveReceiver`` over gloo (bucketed broadcast, xxh3).
Reported: bytes/s per receiver (payload / mean time from publish-done to each receiver holding the verified
version; best of versions 2-4, i.e. steady state with recycled buffers as in a long run; raw: best of 3
passes), the ratio to raw with the same number of receivers (target >= 0.5), the time until the LAST
receiver holds it (fan-out: target at 16 receivers <= 2x that at 1), and the hub's egress per version in
copies of the payload (target <= 2). Also the checksum choice: xxh3 vs sha256 vs a plain copy of the same
bytes, and publish() (copy + checksums) time.

Run: ``.venv/bin/python bench/bench_weights.py [--gib 1.0] [--receivers 1,2,4] [--no-collective] [--no-direct]``.
Receivers are separate processes (this file re-run with ``--role``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import torch
import zmq

from rlef.common.config import TransportConfig
from rlef.common.protocol.transport import Transport

CHUNK = 4 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_state_dict(gib: float) -> dict[str, torch.Tensor]:
    """Llama-like shapes: a few big matrices and many small vectors, float32, ~gib GiB in total."""
    total = int(gib * (1 << 30)) // 4
    hidden = 2048
    rows = total // hidden
    sd: dict[str, torch.Tensor] = {}
    layer = 0
    while rows > 0:
        r = min(rows, 4 * hidden)
        sd[f"model.layers.{layer}.mlp.weight"] = torch.randn(r, hidden)
        sd[f"model.layers.{layer}.norm.weight"] = torch.randn(hidden)
        rows -= r
        layer += 1
    return sd


def transport() -> Transport:
    # Weights frames are chunk-sized; the default HWM is fine.
    return Transport(TransportConfig())


# ---------------------------------------------------------------- receiver processes


def role_raw(port: int, total: int, passes: int) -> None:
    t = transport()
    sock = t.client(zmq.DEALER, f"tcp://127.0.0.1:{port}")
    sock.send(b"ready")
    for _ in range(passes):
        got = 0
        while got < total:
            got += len(sock.recv(copy=False).buffer)
        print(json.dumps({"done": time.time(), "bytes": got}), flush=True)
    sock.close(0)
    t.close()


def _report(receiver, last: int) -> None:
    """Print one line per version (time it became whole and verified); drop it at once so its buffer can be
    recycled for the next version, as an actor does after applying it."""
    version = -1
    while version < last:
        got = receiver.poll(timeout_s=600)
        assert got is not None, getattr(receiver, "error", None)
        version = got.version
        print(json.dumps({"done": time.time(), "version": version, "bytes": got.nbytes}), flush=True)
        del got


def role_zmq(port: int, rid: str, last: int, relay: bool = False) -> None:
    from rlef.common.weights.zmq.receiver import ZmqReceiver

    t = transport()
    rec = ZmqReceiver(t, f"tcp://127.0.0.1:{port}", rid, credit=8, poll_interval_s=0.05,
                      relay_bind="tcp://127.0.0.1:0" if relay else None, relay_stall_s=30.0)
    _report(rec, last)
    rec.close()
    t.close()


def role_collective(port: int, world: int, rid: str, last: int) -> None:
    from rlef.common.weights.collective import CollectiveReceiver

    rec = CollectiveReceiver(host="127.0.0.1", port=port, world_size=world, bucket_bytes=64 << 20, timeout_s=600, receiver_id=rid)
    _report(rec, last)
    rec.close()


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", *args], stdout=subprocess.PIPE, text=True)


def collect(procs: list[subprocess.Popen]) -> list[dict]:
    """The next line of every receiver."""
    out = []
    for p in procs:
        line = p.stdout.readline()
        if not line:
            p.wait(timeout=60)
            raise RuntimeError(f"receiver exited ({p.returncode}) without reporting")
        out.append(json.loads(line))
    return out


def finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"receiver failed ({p.returncode})")


# ---------------------------------------------------------------- measurements


VERSIONS = 4  # versions 2.. are timed (steady state, buffers recycled as in a long run); best one reported
PASSES = 3  # raw passes; best one reported (the host is shared: best-of-N damps other jobs' noise)


def bench_raw(payload: memoryview, n: int) -> tuple[float, float]:
    """Seconds per receiver (mean over receivers, best of PASSES) to receive the payload from a ROUTER
    sending zero-copy chunk frames, and seconds until the last one has it (best of PASSES)."""
    t = transport()
    port = free_port()
    sock = t.server(zmq.ROUTER, f"tcp://127.0.0.1:{port}")
    sock.setsockopt(zmq.SNDHWM, 16)
    procs = [spawn("raw", str(port), str(len(payload)), str(PASSES)) for _ in range(n)]
    peers = [sock.recv_multipart()[0] for _ in range(n)]
    best = last = float("inf")
    for _ in range(PASSES):
        start = time.time()
        for offset in range(0, len(payload), CHUNK):  # interleave receivers, as the weights hub does
            frame = payload[offset : offset + CHUNK]
            for peer in peers:
                sock.send_multipart([peer, frame], copy=False)
        results = collect(procs)
        best = min(best, sum(r["done"] - start for r in results) / n)
        last = min(last, max(r["done"] for r in results) - start)
    finish(procs)
    sock.close(0)
    t.close()
    return best, last


def _versions(sd: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    # Distinct contents per version (a scaled view would alias): perturb one tensor.
    out = []
    for v in range(VERSIONS):
        copy = dict(sd)
        first = next(iter(sd))
        copy[first] = sd[first] + v
        out.append(copy)
    return out


def bench_zmq(sd: dict[str, torch.Tensor], n: int, relay: bool = False) -> dict[str, float]:
    """Best over versions 2..VERSIONS: publish seconds, mean and max seconds from publish-done to each
    receiver holding the verified version, and the hub's egress per version (bytes)."""
    from rlef.common.weights.zmq.hub import ZmqPublisher

    t = transport()
    port = free_port()
    pub = ZmqPublisher(t, f"tcp://127.0.0.1:{port}", chunk_bytes=CHUNK)
    procs = [spawn("zmq", str(port), f"r{i}", str(VERSIONS), "relay" if relay else "direct") for i in range(n)]
    while pub.receivers() < n:  # everybody connected and polling (and, relaying, placed in the chain)
        time.sleep(0.05)
    out = {"publish": float("inf"), "mean": float("inf"), "max": float("inf"), "egress": float("inf")}
    for version, state in enumerate(_versions(sd), start=1):
        start = time.perf_counter()
        sent = pub.sent_bytes
        pub.publish(version, state)
        publish_s = time.perf_counter() - start
        ready = time.time()
        results = collect(procs)
        assert all(r["version"] == version for r in results), results
        if version >= 2:
            out["publish"] = min(out["publish"], publish_s)
            out["mean"] = min(out["mean"], sum(r["done"] - ready for r in results) / n)
            out["max"] = min(out["max"], max(r["done"] for r in results) - ready)
            out["egress"] = min(out["egress"], pub.sent_bytes - sent)
    finish(procs)
    pub.close()
    t.close()
    return out


def bench_collective(sd: dict[str, torch.Tensor], n: int) -> float:
    from rlef.common.weights.collective import CollectivePublisher

    port = free_port()
    pub = CollectivePublisher(host="127.0.0.1", port=port, world_size=n + 1, bucket_bytes=64 << 20, timeout_s=600)
    procs = [spawn("collective", str(port), str(n + 1), f"c{i}", str(VERSIONS)) for i in range(n)]
    if not pub.formed.wait(600):  # the clock starts once every receiver joined
        raise RuntimeError(f"collective group did not form: {pub.error}")
    best = float("inf")
    for version, state in enumerate(_versions(sd), start=1):
        pub.publish(version, state)
        ready = time.time()
        results = collect(procs)
        if version >= 2:
            best = min(best, sum(r["done"] - ready for r in results) / n)
    finish(procs)
    pub.close()
    return best


def bench_receiver_work(view: memoryview) -> dict[str, float]:
    """Seconds a receiver spends per version on its own CPU work, measured here on the same bytes: mapping a
    fresh buffer (MAP_POPULATE), copying the chunks into it (what recv_into now avoids), and checksumming
    (xxh3 per chunk as used; sha256, the earlier choice, and blake2b for comparison)."""
    import xxhash

    from rlef.common.weights.packing import populated

    out = {}
    start = time.perf_counter()
    buffer = memoryview(populated(len(view)).numpy()).cast("B")
    out["populate"] = time.perf_counter() - start
    start = time.perf_counter()
    for offset in range(0, len(view), CHUNK):
        buffer[offset : offset + CHUNK] = view[offset : offset + CHUNK]
    out["copy"] = time.perf_counter() - start
    del buffer
    start = time.perf_counter()
    for offset in range(0, len(view), CHUNK):
        xxhash.xxh3_64_intdigest(view[offset : offset + CHUNK])
    out["xxh3"] = time.perf_counter() - start
    for name in ("sha256", "blake2b"):
        start = time.perf_counter()
        h = hashlib.new(name)
        for offset in range(0, len(view), 16 << 20):
            h.update(view[offset : offset + (16 << 20)])
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--receivers", default="1,2,4")
    parser.add_argument("--no-collective", action="store_true")
    parser.add_argument("--no-direct", action="store_true", help="skip raw and direct zmq (relay only, plus raw at 1)")
    parser.add_argument("--role", nargs="+")
    args = parser.parse_args()
    if args.role:
        kind, rest = args.role[0], args.role[1:]
        if kind == "raw":
            role_raw(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "zmq":
            role_zmq(int(rest[0]), rest[1], int(rest[2]), rest[3] == "relay")
        else:
            role_collective(int(rest[0]), int(rest[1]), rest[2], int(rest[3]))
        return

    from rlef.common.weights.packing import pack

    sd = make_state_dict(args.gib)
    flat = pack(0, sd, CHUNK)
    nbytes = flat.manifest.total_bytes
    gb = nbytes / 1e9
    print(f"state dict: {len(sd)} tensors, {nbytes / (1 << 30):.3f} GiB ({gb:.3f} GB); chunk {CHUNK >> 20} MiB; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    work = bench_receiver_work(flat.view)
    print(f"receiver CPU work per version: map fresh buffer {work['populate']:.2f}s, copy chunks in {work['copy']:.2f}s, "
          f"xxh3 {work['xxh3']:.2f}s ({gb / work['xxh3']:.2f} GB/s), sha256 {work['sha256']:.2f}s "
          f"({gb / work['sha256']:.2f} GB/s; xxh3 {work['sha256'] / work['xxh3']:.1f}x faster), blake2b "
          f"{work['blake2b']:.2f}s")
    print(f"{'receivers':>9} {'raw GB/s/recv':>14} {'zmq GB/s/recv':>14} {'zmq/raw':>8} {'publish s':>10} "
          f"{'raw all s':>10} {'zmq all s':>10} {'zmq egress':>11} {'relay GB/s/recv':>16} {'relay/raw':>10} "
          f"{'relay all s':>12} {'relay egress':>13}" + ("" if args.no_collective else f" {'gloo GB/s/recv':>15} {'gloo/raw':>9}"))
    first_all = None
    for n in [int(x) for x in args.receivers.split(",")]:
        direct = not args.no_direct or n == 1
        raw_s, raw_all = bench_raw(flat.view, n) if direct else (float("nan"), float("nan"))
        z = bench_zmq(sd, n) if direct else {k: float("nan") for k in ("publish", "mean", "max", "egress")}
        r = bench_zmq(sd, n, relay=True)
        first_all = first_all or r["max"]
        line = (f"{n:>9} {gb / raw_s:>14.2f} {gb / z['mean']:>14.2f} {raw_s / z['mean']:>8.2f} {r['publish']:>10.2f} "
                f"{raw_all:>10.2f} {z['max']:>10.2f} {z['egress'] / nbytes:>10.2f}x {gb / r['mean']:>16.2f} "
                f"{raw_s / r['mean']:>10.2f} {r['max']:>8.2f} ({r['max'] / first_all:.2f}x n=1) "
                f"{r['egress'] / nbytes:>6.2f}x")
        if not args.no_collective:
            gloo_s = bench_collective(sd, n)
            line += f" {gb / gloo_s:>15.2f} {raw_s / gloo_s:>9.2f}"
        print(line, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
