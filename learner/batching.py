"""Rollout messages -> token sequences -> padded micro-batches, without ever re-tokenizing.

A rollout's sequence is the concatenation, turn by turn, of the turn's new prompt segment and its response,
exactly as the actor sent the ids. For each turn t it records where the response lies and the index of the
LAST PROMPT TOKEN before it (where the turn-level value V(c_t) is read).

Flat layouts of one rank's share of a batch (see rlef.learner.objective):
- turns: ``[E, K]`` (E rollouts, K = most turns of any of them), flat turn index ``e * K + t``;
- response tokens: one flat array in (rollout, turn, token) order; ``token_turn`` maps each to its flat turn.

A micro-batch pads its sequences on the right to its longest and holds at most ``micro_batch_tokens`` padded
tokens (a single longer sequence still gets a micro-batch of its own). The logit predicting token p sits at
position p - 1, so a response token at position p is scored from row position p - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlef.common.protocol.messages import Rollout, unpack_floats, unpack_ids


@dataclass(frozen=True)
class Sequence:
    """One rollout as the learner trains on it."""

    rollout_id: str
    tokens: np.ndarray           # int64 [L]
    response_starts: np.ndarray  # int64 [T]: position of each turn's first response token
    response_lens: np.ndarray    # int64 [T]
    logprobs_b: np.ndarray       # float32 [sum(response_lens)]: behaviour log-probs, turn after turn
    rewards: np.ndarray          # float64 [T]: task reward r_t (without the KL term)
    versions: np.ndarray         # int64 [T]: policy version of each turn

    @property
    def num_turns(self) -> int:
        return len(self.response_starts)

    @property
    def value_positions(self) -> np.ndarray:
        """Index of the last prompt token of each turn (just before its response)."""
        return self.response_starts - 1

    def response_positions(self) -> np.ndarray:
        return np.concatenate([np.arange(s, s + n) for s, n in zip(self.response_starts, self.response_lens)])


def to_sequence(rollout: Rollout) -> Sequence:
    """Concatenate prompt segments and responses as sent; validation happens earlier (rlef.learner.buffer)."""
    pieces, starts, lens, logps = [], [], [], []
    pos = 0
    for turn in rollout.turns:
        prompt, response = unpack_ids(turn.prompt_ids), unpack_ids(turn.response_ids)
        pieces += [prompt, response]
        pos += len(prompt)
        starts.append(pos)
        lens.append(len(response))
        pos += len(response)
        logps.append(unpack_floats(turn.logprobs))
    return Sequence(
        rollout_id=rollout.rollout_id,
        tokens=np.concatenate(pieces).astype(np.int64),
        response_starts=np.asarray(starts, dtype=np.int64),
        response_lens=np.asarray(lens, dtype=np.int64),
        logprobs_b=np.concatenate(logps).astype(np.float32),
        rewards=np.asarray(rollout.rewards, dtype=np.float64),
        versions=np.asarray([t.policy_version for t in rollout.turns], dtype=np.int64),
    )


@dataclass
class MicroBatch:
    """Padded inputs plus the gather indices that map model outputs back to the flat layouts."""

    input_ids: torch.Tensor       # [n, L]
    attention_mask: torch.Tensor  # [n, L]
    resp_rows: torch.Tensor       # [M] row of each response token
    resp_cols: torch.Tensor       # [M] position of the logit that predicts it (token position - 1)
    resp_targets: torch.Tensor    # [M] the token id
    resp_index: torch.Tensor      # [M] index into the flat response-token arrays
    value_rows: torch.Tensor      # [Tm] row of each turn
    value_cols: torch.Tensor      # [Tm] its last prompt token
    value_index: torch.Tensor     # [Tm] flat turn index e * K + t

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class Layout:
    """Flat turn and token layout of a list of sequences (one rank's share of a batch)."""

    K: int
    turn_mask: torch.Tensor     # bool [E, K]
    rewards: torch.Tensor       # [E, K]
    token_turn: torch.Tensor    # long [N]
    logprobs_b: torch.Tensor    # [N]
    token_offsets: np.ndarray   # [E] start of each sequence's tokens in the flat arrays

    @property
    def num_turns(self) -> int:
        return self.turn_mask.numel()


def layout(sequences: list[Sequence], K: int | None = None) -> Layout:
    E = len(sequences)
    K = K if K is not None else max((s.num_turns for s in sequences), default=1)
    mask = torch.zeros(E, K, dtype=torch.bool)
    rewards = torch.zeros(E, K, dtype=torch.float64)
    token_turn, logps, offsets, off = [], [], [], 0
    for e, seq in enumerate(sequences):
        mask[e, : seq.num_turns] = True
        rewards[e, : seq.num_turns] = torch.from_numpy(seq.rewards)
        offsets.append(off)
        for t, n in enumerate(seq.response_lens):
            token_turn.append(np.full(int(n), e * K + t, dtype=np.int64))
        logps.append(seq.logprobs_b)
        off += int(seq.response_lens.sum())
    return Layout(
        K=K,
        turn_mask=mask,
        rewards=rewards,
        token_turn=torch.from_numpy(np.concatenate(token_turn)) if token_turn else torch.zeros(0, dtype=torch.long),
        logprobs_b=torch.from_numpy(np.concatenate(logps).astype(np.float32)) if logps else torch.zeros(0),
        token_offsets=np.asarray(offsets, dtype=np.int64),
    )


def plan_micro_batches(lengths: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """Group sequence indices so each group's padded size (count x longest) stays within the budget.

    Sequences are taken longest first so similar lengths share a micro-batch (little padding); the loss is a
    sum over tokens, so the order does not change the update.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > micro_batch_tokens:
            groups.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        groups.append(current)
    return groups


def collate(sequences: list[Sequence], indices: list[int], lay: Layout, pad_id: int = 0) -> MicroBatch:
    """Pad ``sequences[indices]`` into one micro-batch with its gather indices into ``lay``."""
    L = max(len(sequences[i].tokens) for i in indices)
    ids = torch.full((len(indices), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), L), dtype=torch.long)
    rr, rc, rt, ri, vr, vc, vi = [], [], [], [], [], [], []
    for row, e in enumerate(indices):
        seq = sequences[e]
        ids[row, : len(seq.tokens)] = torch.from_numpy(seq.tokens)
        mask[row, : len(seq.tokens)] = 1
        pos = seq.response_positions()
        rr.append(np.full(len(pos), row))
        rc.append(pos - 1)
        rt.append(seq.tokens[pos])
        ri.append(lay.token_offsets[e] + np.arange(len(pos)))
        vr.append(np.full(seq.num_turns, row))
        vc.append(seq.value_positions)
        vi.append(e * lay.K + np.arange(seq.num_turns))
    cat = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64))  # noqa: E731
    return MicroBatch(ids, mask, cat(rr), cat(rc), cat(rt), cat(ri), cat(vr), cat(vc), cat(vi))


def dummy_micro_batch(pad_id: int = 0) -> MicroBatch:
    """A two-token micro-batch with nothing to score: keeps a rank with less data in lock-step with FSDP's
    collectives (every rank must run the same number of forward/backward passes)."""
    empty = torch.zeros(0, dtype=torch.long)
    return MicroBatch(torch.full((1, 2), pad_id, dtype=torch.long), torch.ones((1, 2), dtype=torch.long),
                      empty, empty, empty, empty, empty, empty, empty)
