"""The rows of the hf decode engine's running batch (:mod:`rlef.actor.backends.hf_engine`).

Rows of a decode step have different lengths: their caches are left-padded to a common width with zeros,
masked out, and each row gets its own position ids, so a row's numbers do not depend on who shares its batch
(up to float rounding of batched matmuls). The padded tensors are rebuilt only when rows join or leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rlef.actor.backends.base import Generation, Sampling
from rlef.actor.backends.hf_prefix_cache import KV


@dataclass
class Row:
    """One request in the engine: its context, sampling, what it sampled so far, and how to answer it."""

    prompt_ids: list[int]
    sampling: Sampling
    deliver: Callable[[Generation | BaseException], None]
    cancelled: Callable[[], bool]
    version: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    length: int = 0  # tokens the cache holds for this row (context + tokens fed so far)


class DecodeBatch:
    """The running rows' caches as one left-padded tensor per layer (rebuilt only when rows join or leave)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.pads: list[int] = []
        self.width = 0
        self.cache: Any = None  # the DynamicCache over keys/values; None after a join/leave (rebuilt once)

    def add(self, row: Row, kv: KV) -> None:
        import torch

        length = kv[0][0].shape[2]
        if not self.rows:
            self.rows, self.pads, self.width, self.cache = [row], [0], length, None
            self.keys = [k for k, _ in kv]
            self.values = [v for _, v in kv]
            return
        if length > self.width:  # widen everyone else on the left
            grow = length - self.width
            self.keys = [pad_left(k, grow) for k in self.keys]
            self.values = [pad_left(v, grow) for v in self.values]
            self.pads = [p + grow for p in self.pads]
            self.width = length
        extra = self.width - length
        self.cache = None
        self.keys = [torch.cat([k, pad_left(rk, extra)], 0) for k, (rk, _) in zip(self.keys, kv)]
        self.values = [torch.cat([v, pad_left(rv, extra)], 0) for v, (_, rv) in zip(self.values, kv)]
        self.rows.append(row)
        self.pads.append(extra)

    def row_kv(self, i: int) -> KV:
        """Row ``i``'s own cache, without padding (a copy: the batch tensors are dropped or rebuilt later)."""
        p = self.pads[i]
        return [(k[i : i + 1, :, p:].clone(), v[i : i + 1, :, p:].clone()) for k, v in zip(self.keys, self.values)]

    def keep(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__()
            return
        index = torch.tensor(keep)
        self.cache = None
        self.rows = [self.rows[i] for i in keep]
        self.pads = [self.pads[i] for i in keep]
        trim = min(self.pads)  # columns that are padding in every remaining row
        self.keys = [k.index_select(0, index)[:, :, trim:] for k in self.keys]
        self.values = [v.index_select(0, index)[:, :, trim:] for v in self.values]
        self.pads = [p - trim for p in self.pads]
        self.width -= trim


def pad_left(t: Any, n: int) -> Any:
    import torch

    if n == 0:
        return t
    # Zeros, not garbage: masked keys get zero weight, and 0 * a finite value stays 0 (NaN would not).
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3]), t], 2)
