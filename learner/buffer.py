"""The hub's rollout buffer: validate, deduplicate, filter stale, spool to disk, hand out batches.

Invariants
- A rollout id is trained on at most once over the whole run, resumes included: ids already consumed (saved
  in every checkpoint) or waiting in the buffer are rejected as ``duplicate``.
- Nothing accepted is lost to a crash: each accepted frame is appended to a spool file before it can be
  consumed. A checkpoint rewrites the spool to hold only the rollouts still waiting; a resumed learner
  re-admits every spooled rollout that its checkpoint has not consumed (those consumed after the checkpoint
  by the crashed run included, since that training was lost with it).
- A rejected rollout is counted by reason and logged once per reason; the learner keeps running.

Reject reasons: ``decode`` (not a valid Rollout message), ``duplicate``, ``stale`` (oldest turn lags the
current version by more than ``max_policy_lag`` = ``staleness.learner_max_lag``, checked on arrival and again when a batch is formed),
``future_version`` (a turn claims a version the learner has not published, e.g. from a run that crashed
after its last checkpoint), ``token_out_of_vocab``, ``too_long`` (more than ``model.max_seq_len`` tokens),
``empty_prompt`` (turn 1 has no prompt token to read V at), ``nonfinite_logprobs``, ``positive_logprobs``,
``nonfinite_rewards``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from rlef.common.errors import MessageError
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import Rollout, encode, unpack_floats, unpack_ids
from rlef.common.log_limit import LogOnce

log = logging.getLogger(__name__)

REASONS = ("decode", "duplicate", "stale", "future_version", "token_out_of_vocab", "too_long", "empty_prompt",
           "nonfinite_logprobs", "positive_logprobs", "nonfinite_rewards")
# Behaviour log-probs are log-probabilities: a little above 0 is float noise, more is a broken actor.
_LOGPROB_SLACK = 1e-3


class RolloutRejected(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def validate(rollout: Rollout, vocab_size: int, max_seq_len: int) -> None:
    """Raise RolloutRejected when the rollout cannot be trained on as sent."""
    total = 0
    for i, turn in enumerate(rollout.turns):
        prompt, response = unpack_ids(turn.prompt_ids), unpack_ids(turn.response_ids)
        if i == 0 and len(prompt) == 0:
            raise RolloutRejected("empty_prompt", "turn 1 has no prompt tokens")
        for ids in (prompt, response):
            if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
                raise RolloutRejected("token_out_of_vocab", f"turn {i + 1}: ids in [{ids.min()}, {ids.max()}], vocab {vocab_size}")
        total += len(prompt) + len(response)
        logps = unpack_floats(turn.logprobs)
        if not np.isfinite(logps).all():
            raise RolloutRejected("nonfinite_logprobs", f"turn {i + 1}")
        if len(logps) and logps.max() > _LOGPROB_SLACK:
            raise RolloutRejected("positive_logprobs", f"turn {i + 1}: max {logps.max():.4g}")
    if total > max_seq_len:
        raise RolloutRejected("too_long", f"{total} tokens > model.max_seq_len {max_seq_len}")
    if not np.isfinite(np.asarray(rollout.rewards, dtype=np.float64)).all():
        raise RolloutRejected("nonfinite_rewards", "")


class Spool:
    """Append-only file of length-prefixed raw rollout frames (flushed per frame, fsynced on rewrite)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")

    def append(self, frame: bytes) -> None:
        self._file.write(struct.pack("<Q", len(frame)) + frame)
        self._file.flush()

    def rewrite(self, frames: Iterable[bytes]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for frame in frames:
                out.write(struct.pack("<Q", len(frame)) + frame)
            out.flush()
            os.fsync(out.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")

    def read(self) -> list[bytes]:
        """Every whole frame in the file (a torn tail from a crash mid-write is ignored)."""
        frames, data = [], self.path.read_bytes() if self.path.exists() else b""
        pos = 0
        while pos + 8 <= len(data):
            (n,) = struct.unpack_from("<Q", data, pos)
            if pos + 8 + n > len(data):
                log.warning("spool %s: ignoring a torn last frame (%d of %d bytes)", self.path, len(data) - pos - 8, n)
                break
            frames.append(data[pos + 8 : pos + 8 + n])
            pos += 8 + n
        return frames

    def close(self) -> None:
        self._file.close()


class RolloutBuffer:
    """FIFO of valid, unseen, fresh-enough rollouts waiting to be trained on (rank 0 only)."""

    def __init__(self, vocab_size: int, max_seq_len: int, max_policy_lag: int, spool_path: Path | None = None,
                 on_reject: Callable[[str], None] | None = None):
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.max_policy_lag = max_policy_lag
        self.version = 0
        self.consumed: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self._waiting: OrderedDict[str, tuple[Rollout, bytes]] = OrderedDict()
        self._log = LogOnce(log, "hub: rejected rollouts")  # once per reason: a flood must not flood the log
        self._on_reject = on_reject
        self.spool = Spool(spool_path) if spool_path is not None else None

    def __len__(self) -> int:
        return len(self._waiting)

    def _reject(self, reason: str, detail: str, sender: str | None) -> None:
        self.rejected[reason] += 1
        if self._on_reject is not None:
            self._on_reject(reason)
        self._log.warning(reason, "rejected rollout (%s) from %s: %s (further '%s' rejections are only counted)",
                          reason, sender or "?", detail, reason)

    def _check_version(self, rollout: Rollout) -> None:
        newest = max(t.policy_version for t in rollout.turns)
        if newest > self.version:
            raise RolloutRejected("future_version", f"turn version {newest} > learner version {self.version}")
        lag = self.version - rollout.oldest_version
        if lag > self.max_policy_lag:
            raise RolloutRejected("stale", f"lag {lag} > max_policy_lag {self.max_policy_lag}")

    def offer(self, frame: bytes, sender: str | None = None, *, spool: bool = True) -> bool:
        """Decode, validate and enqueue one frame; return whether it was accepted."""
        try:
            rollout = decode(frame, Rollout, sender=sender)
        except MessageError as exc:
            self._reject("decode", str(exc), sender)
            return False
        rid = rollout.rollout_id
        try:
            if rid in self.consumed or rid in self._waiting:
                raise RolloutRejected("duplicate", f"rollout_id {rid!r} already seen")
            validate(rollout, self.vocab_size, self.max_seq_len)
            self._check_version(rollout)
        except RolloutRejected as exc:
            self._reject(exc.reason, f"{rid}: {exc}", sender)
            return False
        self._waiting[rid] = (rollout, bytes(frame))
        if spool and self.spool is not None:
            self.spool.append(bytes(frame))
        return True

    def take(self, n: int) -> list[Rollout]:
        """Up to ``n`` oldest waiting rollouts, re-checked for staleness; marks them consumed."""
        return [rollout for rollout, _ in self.take_frames(n)]

    def take_frames(self, n: int) -> list[tuple[Rollout, bytes]]:
        """As ``take``, each rollout with the exact frame it arrived in (forwarded to the other ranks as is)."""
        out: list[tuple[Rollout, bytes]] = []
        while self._waiting and len(out) < n:
            rid, (rollout, frame) = self._waiting.popitem(last=False)
            try:
                self._check_version(rollout)
            except RolloutRejected as exc:
                self._reject(exc.reason, f"{rid}: {exc}", rollout.actor_id)
                continue
            self.consumed.add(rid)
            out.append((rollout, frame))
        return out

    def give_back(self, rollouts: list[Rollout], frames: list[bytes] | None = None) -> None:
        """Undo ``take`` for rollouts that were not trained on (a stop while a batch was being gathered)."""
        frames = frames if frames is not None else [encode(r) for r in rollouts]
        waiting = OrderedDict((r.rollout_id, (r, f)) for r, f in zip(rollouts, frames))
        waiting.update(self._waiting)
        self._waiting = waiting
        self.consumed.difference_update(waiting)

    def restore(self, consumed: Iterable[str], version: int) -> int:
        """After loading a checkpoint: set its consumed ids and version, re-admit spooled rollouts; returns how many."""
        self.consumed = set(consumed)
        self.version = version
        if self.spool is None:
            return 0
        frames = self.spool.read()
        admitted = sum(self.offer(frame, "spool", spool=False) for frame in frames)
        self.spool.rewrite(frame for _, frame in self._waiting.values())
        return admitted

    def compact_spool(self) -> None:
        """Called after a checkpoint is complete: keep only what is still waiting."""
        if self.spool is not None:
            self.spool.rewrite(frame for _, frame in self._waiting.values())
