"""What every wire message shares: the schema version, the bounds applied before any allocation, and the
base Structs (:class:`Strict` for every message and part of one, :class:`Message` for a top-level message).

The messages themselves are in :mod:`rlef.common.protocol.messages`; :mod:`rlef.common.protocol.decoding`
decodes and validates them under these bounds.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

SCHEMA_VERSION = 1

# Bounds applied before any allocation. A frame larger than MAX_FRAME_BYTES is rejected unread.
MAX_FRAME_BYTES = 256 << 20
MAX_STR_BYTES = 64 << 20
MAX_BIN_BYTES = 256 << 20
MAX_ARRAY_LEN = 1 << 20  # longest top-level list (decoded element by element)
MAX_MAP_LEN = 1 << 16  # kept for importers; decode bounds every map by MAX_NESTED_LEN
# Longest map or nested list any schema admits (turns, rewards, timings, info, capabilities, shape); only a
# message's top-level lists (ExecutionJob/ExecutionResult.tests, WeightsManifest.tensors) may be longer.
# A new field holding a longer map, or a longer list below the top level, must raise this bound.
MAX_NESTED_LEN = 64
MAX_ERROR_CHARS = 300  # Error texts quote at most this much of what the peer sent.
MAX_CONTROL_FRAME_BYTES = 64 << 10  # the control channel's messages are small: a larger frame is rejected unread

# Wire bound on a job's code, far above executor.max_code_bytes (1 MiB by default), so that the executor's own
# check is the one that answers an oversized program with an error result naming its limit.
MAX_CODE_BYTES = 16 << 20
MAX_TEST_IO_BYTES = 64 << 20
MAX_TURNS = 64
MAX_ID_LEN = 256


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every message and part of one: frozen, keyword-only, unknown fields rejected on decode.

    ``gc=False``: messages are trees (a Struct never refers back to its parent), so the cycle collector
    need not track them: a decoded rollout adds 3 tracked objects (its lists and dict) instead of 11.
    """

    def to_builtins(self) -> dict[str, Any]:
        """The message as plain dicts, lists and scalars (bytes stay bytes), without the ``schema`` tag."""
        out = msgspec.to_builtins(self, builtin_types=(bytes, bytearray, memoryview))
        if isinstance(self, Message):
            out.pop("schema", None)
        return out

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (msgspec.structs.replace: ``__post_init__`` checks run again; field
        types are not checked)."""
        return msgspec.structs.replace(self, **changes)


class Message(Strict, tag_field="schema"):
    """A top-level message: ``KIND`` names it on the wire; its Struct tag is ``schema_name(cls)``."""

    KIND: ClassVar[str]


def schema_tag(kind: str) -> str:
    """The Struct tag (the wire's ``schema`` field) of message kind ``kind``."""
    return f"rlef.{kind}/{SCHEMA_VERSION}"


def schema_name(cls: type[Message]) -> str:
    return schema_tag(cls.KIND)
