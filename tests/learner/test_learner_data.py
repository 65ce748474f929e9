"""Rollout -> sequence layout, micro-batch planning, and the buffer's validation / dedup / staleness / spool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.rollouts import make_rollout, make_rollouts
from rlef.common.protocol.messages import encode, pack_floats, pack_ids, unpack_floats, unpack_ids
from rlef.learner.batching import collate, layout, plan_micro_batches, to_sequence
from rlef.learner.buffer import REASONS, RolloutBuffer

VOCAB = 50


def test_sequence_is_the_ids_as_sent_with_turn_positions():
    r = make_rollout(VOCAB, seed=3, turns=3)
    seq = to_sequence(r)
    expected, pos = [], 0
    for t, turn in enumerate(r.turns):
        prompt, resp = unpack_ids(turn.prompt_ids).tolist(), unpack_ids(turn.response_ids).tolist()
        expected += prompt
        pos += len(prompt)
        assert seq.response_starts[t] == pos and seq.value_positions[t] == pos - 1
        assert seq.tokens[pos : pos + len(resp)].tolist() == resp
        expected += resp
        pos += len(resp)
    assert seq.tokens.tolist() == expected
    assert np.allclose(seq.logprobs_b, np.concatenate([unpack_floats(t.logprobs) for t in r.turns]))


def test_collate_gathers_the_right_positions():
    rollouts = make_rollouts(5, VOCAB, seed=1)
    seqs = [to_sequence(r) for r in rollouts]
    lay = layout(seqs)
    mb = collate(seqs, [3, 0, 4], lay)
    for row, e in enumerate([3, 0, 4]):
        seq = seqs[e]
        sel = mb.resp_rows == row
        # the logit at position p-1 predicts the response token at p
        assert (mb.input_ids[row, mb.resp_cols[sel] + 1] == mb.resp_targets[sel]).all()
        assert (lay.token_turn[mb.resp_index[sel]] // lay.K == e).all()
        assert torch.equal(lay.logprobs_b[mb.resp_index[sel]], torch.from_numpy(seq.logprobs_b))
        vsel = mb.value_rows == row
        assert mb.value_cols[vsel].tolist() == seq.value_positions.tolist()
        assert mb.value_index[vsel].tolist() == [e * lay.K + t for t in range(seq.num_turns)]
    assert mb.attention_mask.sum().item() == sum(len(seqs[e].tokens) for e in [3, 0, 4])


@pytest.mark.parametrize("budget", [10, 64, 1000])
def test_micro_batch_plan_covers_all_within_budget(budget):
    rng = np.random.default_rng(budget)
    lengths = rng.integers(1, 80, size=40).tolist()
    groups = plan_micro_batches(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(40))
    for g in groups:
        assert len(g) == 1 or max(lengths[i] for i in g) * len(g) <= budget


def buffer(**kw) -> RolloutBuffer:
    return RolloutBuffer(VOCAB, kw.pop("max_seq_len", 200), kw.pop("lag", 2), **kw)


def corrupt(r, **turn_update):
    return r.replace(turns=[r.turns[0].replace(**turn_update)] + list(r.turns[1:]))


def test_every_reject_reason_is_counted_and_valid_ones_pass():
    buf = buffer()
    good = make_rollout(VOCAB, seed=0, turns=2, rollout_id="ok")
    n = good.turns[0].num_response_tokens
    cases = {
        "decode": b"not msgpack",
        "token_out_of_vocab": encode(corrupt(good, prompt_ids=pack_ids([1, VOCAB]))),
        "empty_prompt": encode(corrupt(good, prompt_ids=b"")),
        "nonfinite_logprobs": encode(corrupt(good, logprobs=pack_floats([float("inf")] * n))),
        "positive_logprobs": encode(corrupt(good, logprobs=pack_floats([0.5] * n))),
        "too_long": encode(corrupt(good, prompt_ids=pack_ids([1] * 250))),
        "future_version": encode(make_rollout(VOCAB, seed=2, version=3)),
    }
    for reason, frame in cases.items():
        assert not buf.offer(frame), reason
        assert buf.rejected[reason] == 1, reason
    assert buf.offer(encode(good))
    assert not buf.offer(encode(good)) and buf.rejected["duplicate"] == 1
    assert set(buf.rejected) <= set(REASONS)
    assert [r.rollout_id for r in buf.take(5)] == ["ok"]
    assert not buf.offer(encode(good)) and buf.rejected["duplicate"] == 2  # consumed ids stay duplicates


def test_staleness_on_arrival_and_when_taken():
    buf = buffer(lag=1)
    buf.version = 5
    assert not buf.offer(encode(make_rollout(VOCAB, seed=0, version=3, rollout_id="old")))
    assert buf.offer(encode(make_rollout(VOCAB, seed=1, version=4, rollout_id="fresh")))
    buf.version = 6  # the learner moved on while it waited
    assert buf.take(1) == [] and buf.rejected["stale"] == 2
    assert "fresh" not in buf.consumed


def test_spool_replays_what_a_crash_lost_and_nothing_consumed(tmp_path):
    spool = tmp_path / "spool.bin"
    buf = buffer(spool_path=spool, lag=10)
    for r in make_rollouts(6, VOCAB, seed=4):
        assert buf.offer(encode(r))
    first = buf.take(2)
    checkpoint_consumed = set(buf.consumed)
    buf.compact_spool()                     # checkpoint: consumed = first two
    lost = buf.take(2)                      # trained after the checkpoint, then the process dies
    buf.spool.close()
    with open(spool, "ab") as f:            # a torn frame at the tail from the crash
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00abc")
    again = buffer(spool_path=spool, lag=10)
    assert again.restore(checkpoint_consumed, version=0) == 4
    replay = [r.rollout_id for r in again.take(10)]
    assert replay == [r.rollout_id for r in lost] + [r.rollout_id for r in make_rollouts(6, VOCAB, seed=4)[4:]]
    assert not set(replay) & {r.rollout_id for r in first}


def test_give_back_restores_order_and_unconsumes():
    buf = buffer()
    for r in make_rollouts(3, VOCAB, seed=5):
        buf.offer(encode(r))
    taken = buf.take(2)
    buf.give_back(taken)
    assert not buf.consumed
    assert [r.rollout_id for r in buf.take(3)] == [r.rollout_id for r in make_rollouts(3, VOCAB, seed=5)]
