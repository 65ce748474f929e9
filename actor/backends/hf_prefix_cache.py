"""The prefix cache of the hf decode engine (:mod:`rlef.actor.backends.hf_engine`).

When a request finishes, the KV cache of everything the model has read (its context and all sampled tokens
but the last, which was never fed) is kept under those token ids. A new request whose context starts with a
kept entry reads only the rest ("suffix"), then the entry leaves the store (the episode moved on; its next
state is stored when this request ends). Entries are tied to the weights version they were computed with:
after a weights update no old entry is reused. The store is bounded in tokens and bytes and evicts the
least recently stored entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KV = list[tuple[Any, Any]]  # per layer (keys, values), each [1, kv_heads, length, head_dim]


@dataclass
class CacheEntry:
    ids: list[int]
    kv: KV
    version: int


class PrefixCache:
    """Finished requests' KV caches keyed by the token ids they cover; bounded in tokens (oldest out first)."""

    def __init__(self, max_tokens: int, max_bytes: int = 1 << 30):
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes  # entries of episodes that ended are never taken: bound what they hold
        self._entries: list[CacheEntry] = []
        self._tokens = 0
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, prompt_ids: list[int], version: int) -> CacheEntry | None:
        """The longest kept entry of ``version`` that is a strict prefix of ``prompt_ids``, removed from the store.

        Strict: at least one token must remain to be read, since its logits are what the first sample needs."""
        best: CacheEntry | None = None
        n = len(prompt_ids)
        for entry in self._entries:
            m = len(entry.ids)
            if entry.version == version and m < n and (best is None or m > len(best.ids)) and prompt_ids[:m] == entry.ids:
                best = entry
        if best is None:
            self.misses += 1
            return None
        self._entries.remove(best)
        self._tokens -= len(best.ids)
        self._bytes -= kv_nbytes(best.kv)
        self.hits += 1
        self.reused_tokens += len(best.ids)
        return best

    def put(self, ids: list[int], kv: KV, version: int) -> None:
        if len(ids) > self.max_tokens or not ids:
            return
        self._entries.append(CacheEntry(ids, kv, version))
        self._tokens += len(ids)
        self._bytes += kv_nbytes(kv)
        while self._entries and (self._tokens > self.max_tokens or self._bytes > self.max_bytes):
            old = self._entries.pop(0)
            self._tokens -= len(old.ids)
            self._bytes -= kv_nbytes(old.kv)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0
        self._bytes = 0


def kv_nbytes(kv: KV) -> int:
    return sum(getattr(t, "nbytes", 0) for pair in kv for t in pair)
