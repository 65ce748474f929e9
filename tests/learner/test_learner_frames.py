"""Rank 0 forwards rollouts as the frames they arrived in: the buffer hands out each accepted rollout with its
exact frame, the real Hub's collect_frames returns the bytes a peer pushed, and a stop gives the frames back
unchanged (they stay unconsumed and spooled as they came)."""

from __future__ import annotations

from pathlib import Path

import zmq
from helpers.executor_service import free_port
from helpers.rollouts import make_rollout

from rlef.common.config import load_config
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Rollout, encode
from rlef.common.protocol.transport import Transport
from rlef.learner.buffer import RolloutBuffer
from rlef.learner.hub import Hub

VOCAB = 1000


def test_buffer_hands_out_the_frames_it_accepted_and_takes_them_back() -> None:
    buf = RolloutBuffer(VOCAB, 4096, max_policy_lag=4)
    frames = [encode(make_rollout(VOCAB, seed=i, rollout_id=f"r{i}")) for i in range(3)]
    for frame in frames:
        assert buf.offer(frame)
    taken = buf.take_frames(2)
    assert [f for _, f in taken] == frames[:2]
    assert [decode(f, Rollout) for _, f in taken] == [r for r, _ in taken]
    buf.give_back([r for r, _ in taken], [f for _, f in taken])
    assert [f for _, f in buf.take_frames(3)] == frames  # given back in front, frames untouched


def test_hub_collects_the_pushed_bytes(tmp_path: Path) -> None:
    config = load_config(None, [f"endpoints.rollout_port={free_port()}", f"endpoints.control_port={free_port()}",
                                f"endpoints.weights_port={free_port()}", "weights.type=zmq", f"run.output_dir={tmp_path}"])
    hub = Hub(config, vocab_size=VOCAB, version=0, spool_path=tmp_path / "spool")
    transport = Transport(config.transport)
    try:
        sock = transport.client(zmq.PUSH, config.endpoints.learner(config.endpoints.rollout_port))
        sent = [encode(make_rollout(VOCAB, seed=i, rollout_id=f"p{i}")) for i in range(2)]
        for frame in sent:
            sock.send(frame)
        got = hub.collect_frames(2, lambda: False)
        assert got is not None
        rollouts, frames = got
        assert frames == sent and [r.rollout_id for r in rollouts] == ["p0", "p1"]
        assert hub.collect_frames(1, lambda: True) is None  # a stop while waiting: nothing taken
        sock.close(0)
    finally:
        transport.close()
        hub.close(stop_peers=False)
