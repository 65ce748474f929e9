"""Answers for jobs that cannot be decoded: every job gets a result, even one the schema rejects.

A frame that fails validation (``limits.time_s`` of 0, a field of the wrong type, an unknown version) still
usually carries a readable ``job_id``. :func:`salvage_job_id` reads just that, under the same allocation
bounds as the decoder (nothing is allocated for a value it skips), so the broker and the executor can answer
the requester with a refusal naming the field instead of leaving it to wait out its timeout.
"""

from __future__ import annotations

import msgpack

from rlef.common.protocol.base import MAX_ID_LEN

JOB_SCHEMA_PREFIX = "rlef.execution_job/"


def salvage_job_id(frame: bytes) -> str | None:
    """The ``job_id`` of a frame that looks like an execution job (any version), else None."""
    size = len(frame)
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=max(size, 1), max_str_len=size, max_bin_len=size,
        max_array_len=min(size, 1 << 16), max_map_len=min(size, 1 << 10), max_ext_len=0,
    )
    try:
        unpacker.feed(frame)
        entries = unpacker.read_map_header()
        job_id: str | None = None
        schema: str | None = None
        for _ in range(min(entries, 64)):
            key = unpacker.unpack()
            if key in ("job_id", "schema"):
                value = unpacker.unpack()
                if key == "job_id":
                    job_id = value if isinstance(value, str) else None
                else:
                    schema = value if isinstance(value, str) else None
            else:
                unpacker.skip()
            if job_id is not None and schema is not None:
                break
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, MemoryError, RecursionError):
        return None
    if schema is None or not schema.startswith(JOB_SCHEMA_PREFIX):
        return None
    if job_id is None or not 1 <= len(job_id) <= MAX_ID_LEN:
        return None
    return job_id
