"""Wire schemas of every message between roles: msgpack maps validated by msgspec Structs.

Every message carries ``schema = "rlef.<kind>/<version>"`` (the Struct tag; written as the map's first key,
accepted at any position). :func:`~rlef.common.protocol.decoding.decode` bounds the frame's size, checks the
schema name and version, validates every field strictly (types, bounds, literals, patterns, finiteness,
cross-field rules), and raises exactly one error type, :class:`MessageError`, for anything malformed, so a
receiver's loop is ``try: decode(...) except MessageError: count, log once, continue``.

Validation happens in the receiver, through ``decode``: msgspec checks every field's type and
constraint (``Meta``) while it decodes, then runs each Struct's ``__post_init__`` (the cross-field rules).
Constructing a message in Python runs ``__post_init__`` too (the cross-field rules; a Rollout checks
those of its turns and final outcome, so a lone Turn is checked when it is put into a Rollout), but NOT the
per-field type and constraint checks (msgspec does not type-check keyword construction): senders are our
own code, and every receiver validates the whole message on decode, so a sender's mistake is still caught,
at the receiver.

Token ids travel as little-endian int32 bytes and log-probabilities as little-endian float32 bytes: four
bytes a token instead of msgpack's up-to-nine, and decoding is a length check instead of a per-element walk.
Use :func:`pack_ids` / :func:`unpack_ids` and :func:`pack_floats` / :func:`unpack_floats`.

Every message has ``to_builtins()`` (a plain dict, bytes kept as bytes, without the ``schema`` tag) and
``replace(**changes)`` (a new message with the cross-field rules checked again), named after msgspec's own
functions. Messages are frozen, keyword-only and compare by value.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
import numpy as np
from msgspec import Meta

from rlef.common.errors import MessageError
from rlef.common.protocol.base import (MAX_BIN_BYTES, MAX_CODE_BYTES, MAX_ID_LEN, MAX_STR_BYTES, MAX_TEST_IO_BYTES,
                                      MAX_TURNS, Message, Strict, schema_name, schema_tag)

TestStatus = Literal[
    "pass", "wrong_answer", "runtime_error", "timeout", "oom", "output_limit", "syntax_error", "sandbox_error"
]
# A turn's outcome is a test status, or "no_code" when the response held no program to run.
TurnStatus = Literal[
    "pass", "wrong_answer", "runtime_error", "timeout", "oom", "output_limit", "syntax_error", "sandbox_error", "no_code"
]

# Field types with their constraints (checked by decode; see the module docstring for construction).
ID = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
_FMAX = sys.float_info.max
# No field of any message has a meaning for NaN or infinity: both fail these bounds (NaN fails every bound).
Finite = Annotated[float, Meta(ge=-_FMAX, le=_FMAX)]
NonNegative = Annotated[float, Meta(ge=0, le=_FMAX)]
NonNegInt = Annotated[int, Meta(ge=0)]
_Str = Annotated[str, Meta(max_length=MAX_STR_BYTES)]
_Bin = Annotated[bytes, Meta(max_length=MAX_BIN_BYTES)]
_IO = Annotated[str, Meta(max_length=MAX_TEST_IO_BYTES)]
_Long = Annotated[str, Meta(max_length=1 << 20)]
_Name = Annotated[str, Meta(min_length=1, max_length=1024)]

# ---------------------------------------------------------------- execution


class TestCase(Strict, kw_only=True):
    input: _IO
    output: _IO


class TestsRef(Strict, kw_only=True):
    """Tests the executor looks up itself instead of receiving them inline."""

    dataset: Literal["codecontests", "humaneval", "sample"]
    split: Annotated[str, Meta(min_length=1, max_length=64)]
    problem_id: ID
    test_set: Literal["public", "private", "generated", "public+private", "all"]
    path: Annotated[str, Meta(max_length=4096)] | None = None  # dataset location on the executor host (codecontests)


class Limits(Strict, kw_only=True):
    time_s: Annotated[float, Meta(gt=0, le=3600)]
    memory_bytes: Annotated[int, Meta(gt=0, le=1 << 40)]


class ExecutionJob(Message, tag=schema_tag("execution_job"), kw_only=True):
    KIND: ClassVar[str] = "execution_job"
    job_id: ID
    code: Annotated[str, Meta(max_length=MAX_CODE_BYTES)]
    tests: Annotated[list[TestCase], Meta(max_length=1 << 16)] | None = None
    tests_ref: TestsRef | None = None
    limits: Limits
    stop_on_first_failure: bool = False
    # The first gate_tests tests decide whether the rest run: if any of them does not pass, the job ends after
    # them (0: no gate). A turn's public tests and the episode's final tests then share one job and one jail.
    gate_tests: NonNegInt = 0
    language: Literal["python"] = "python"

    def __post_init__(self) -> None:
        if (self.tests is None) == (self.tests_ref is None):
            raise ValueError("exactly one of tests (inline) and tests_ref must be given")


class TestResult(Strict, kw_only=True):
    status: TestStatus
    stdout: _IO = ""  # truncated to the executor's cap
    stderr: _IO = ""  # tail, with sandbox paths cleaned
    time_s: NonNegative = 0.0
    exit_code: int | None = None
    # CPU seconds of every process the test started, and their peak memory together (from the test's cgroup;
    # of the test's own process only when the executor runs with weak limits). None: not measured.
    cpu_s: NonNegative | None = None
    memory_bytes: NonNegInt | None = None


class ExecutionResult(Message, tag=schema_tag("execution_result"), kw_only=True):
    KIND: ClassVar[str] = "execution_result"
    job_id: ID
    worker_id: Annotated[str, Meta(max_length=MAX_ID_LEN)] = ""
    compile_ok: bool
    compile_message: _Long = ""
    tests: Annotated[list[TestResult], Meta(max_length=1 << 16)] = msgspec.field(default_factory=list)
    tests_total: NonNegInt  # tests in the job; more than len(tests) when it stopped on a failure
    error: _Long = ""  # why the job as a whole is sandbox_error (empty otherwise)
    attempts: Annotated[int, Meta(ge=1)] = 1
    seconds: NonNegative = 0.0

    def __post_init__(self) -> None:
        if len(self.tests) > self.tests_total:
            raise ValueError(f"{len(self.tests)} test results for tests_total={self.tests_total}")

    @property
    def passed(self) -> bool:
        return self.compile_ok and not self.error and len(self.tests) == self.tests_total and all(
            t.status == "pass" for t in self.tests
        )

    @property
    def status(self) -> TestStatus:
        """The job's headline status: syntax_error, sandbox_error, pass, or its first failing test's status."""
        if self.error:
            return "sandbox_error"
        if not self.compile_ok:
            return "syntax_error"
        for test in self.tests:
            if test.status != "pass":
                return test.status
        return "pass" if len(self.tests) == self.tests_total else "sandbox_error"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for test in self.tests:
            out[test.status] = out.get(test.status, 0) + 1
        return out


# ---------------------------------------------------------------- rollouts


# Turn, TurnOutcome and FinalOutcome exist only inside a Rollout: their cross-field rules are checked by
# Rollout.__post_init__ (on construction of the Rollout and on decode), one Python call a rollout instead of
# seven, which is a quarter of a rollout's decoding time. The error names the part, e.g. ``turns.0.outcome``.


class TurnOutcome(Strict, kw_only=True):
    status: TurnStatus
    public_passed: NonNegInt = 0  # at most public_total (checked by Rollout)
    public_total: NonNegInt = 0


class Turn(Strict, kw_only=True):
    prompt_ids: _Bin  # int32 LE: the new prompt segment of this turn
    response_ids: Annotated[bytes, Meta(min_length=4, max_length=MAX_BIN_BYTES)]  # int32 LE: the sampled response
    logprobs: _Bin  # float32 LE: behaviour log-prob of each response token
    policy_version: NonNegInt
    has_code: bool
    outcome: TurnOutcome
    # Checked by Rollout: both id buffers whole int32s, one logprob per response token.

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids) // 4

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids) // 4


class FinalOutcome(Strict, kw_only=True):
    passed: bool  # the last program passed public + private tests
    status: TurnStatus
    tests_passed: NonNegInt
    tests_total: NonNegInt  # at least tests_passed (checked by Rollout)


class Rollout(Message, tag=schema_tag("rollout"), kw_only=True):
    KIND: ClassVar[str] = "rollout"
    rollout_id: ID
    actor_id: ID
    problem_id: ID
    turns: Annotated[list[Turn], Meta(min_length=1, max_length=MAX_TURNS)]
    final: FinalOutcome
    # Task reward r_t of each turn (the KL term is the learner's); one per turn, so at most MAX_TURNS.
    rewards: Annotated[list[Finite], Meta(max_length=MAX_TURNS)]
    timings: Annotated[dict[Annotated[str, Meta(max_length=1024)], Finite], Meta(max_length=64)] = msgspec.field(default_factory=dict)
    random_feedback: bool = False

    def __post_init__(self) -> None:
        # Runs on every decoded rollout: the common (valid) case is one cheap pass; _reject says what failed.
        turns = self.turns
        if len(self.rewards) != len(turns):
            raise ValueError(f"{len(self.rewards)} rewards for {len(turns)} turns")
        for turn in turns:
            response = len(turn.response_ids)
            outcome = turn.outcome
            if len(turn.prompt_ids) % 4 or response % 4 or len(turn.logprobs) != response or (
                outcome.public_passed > outcome.public_total
            ):
                self._reject()
        if self.final.tests_passed > self.final.tests_total:
            self._reject()

    def _reject(self) -> None:
        for index, turn in enumerate(self.turns):
            response, outcome = turn.response_ids, turn.outcome
            if len(turn.prompt_ids) % 4 or len(response) % 4:
                raise ValueError(f"at turns.{index}: token id buffers must be int32 (length a multiple of 4)")
            if len(turn.logprobs) != len(response):
                raise ValueError(f"at turns.{index}: {len(turn.logprobs) // 4} logprobs for {len(response) // 4} response tokens")
            if outcome.public_passed > outcome.public_total:
                raise ValueError(f"at turns.{index}.outcome: public_passed {outcome.public_passed} > public_total {outcome.public_total}")
        final = self.final
        raise ValueError(f"at final: tests_passed {final.tests_passed} > tests_total {final.tests_total}")

    @property
    def oldest_version(self) -> int:
        return min(t.policy_version for t in self.turns)

    @property
    def num_tokens(self) -> int:
        return sum(t.num_prompt_tokens + t.num_response_tokens for t in self.turns)


# ---------------------------------------------------------------- weights


DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}
MAX_WEIGHTS_BYTES = 1 << 40  # 1 TiB: a 70B model in float32 is 280 GB.


class TensorSpec(Strict, kw_only=True):
    name: _Name
    shape: Annotated[list[NonNegInt], Meta(max_length=16)]
    dtype: Literal["float32", "bfloat16", "float16", "int64", "int32", "uint8", "bool"]
    offset: NonNegInt  # byte offset in the version's flat payload
    nbytes: NonNegInt  # always prod(shape) * itemsize(dtype)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:  # decode checks the Literal first; this guards Python construction
            raise ValueError(f"unknown dtype {str(self.dtype)[:40]!r}")
        expected = math.prod(self.shape) * DTYPE_BYTES[self.dtype]
        if self.nbytes != expected:
            raise ValueError(f"tensor {self.name[:80]} of shape {self.shape} {self.dtype} has nbytes {self.nbytes}, expected {expected}")


class WeightsManifest(Message, tag=schema_tag("weights_manifest"), kw_only=True):
    KIND: ClassVar[str] = "weights_manifest"
    version: NonNegInt
    tensors: Annotated[list[TensorSpec], Meta(max_length=1 << 16)]
    total_bytes: Annotated[int, Meta(ge=0, le=MAX_WEIGHTS_BYTES)]
    chunk_bytes: Annotated[int, Meta(gt=0, le=MAX_BIN_BYTES)]  # every chunk but the last carries exactly this many
    num_chunks: NonNegInt
    # Integrity (CURVE authenticates; this only guards against corruption): the xxh3-64 of each chunk as
    # little-endian uint64s, so every chunk is checked as it lands (and before a relay forwards it), and
    # ``checksum``, the xxh3-64 of those bytes in hex: one name for the whole version's content.
    chunk_xxh3: Annotated[bytes, Meta(max_length=MAX_BIN_BYTES)]
    checksum: Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:  # decode checks the bound first; this guards Python construction
            raise ValueError(f"chunk_bytes {self.chunk_bytes} must be positive")
        if self.num_chunks != -(-self.total_bytes // self.chunk_bytes):
            raise ValueError(f"num_chunks {self.num_chunks} does not cover {self.total_bytes} bytes")
        if len(self.chunk_xxh3) != 8 * self.num_chunks:
            raise ValueError(f"chunk_xxh3 has {len(self.chunk_xxh3)} bytes for {self.num_chunks} chunks (8 each)")
        end = 0
        for spec in self.tensors:
            if spec.offset < end or spec.offset + spec.nbytes > self.total_bytes:
                raise ValueError(f"tensor {spec.name[:80]} has byte range outside the payload or overlapping")
            end = spec.offset + spec.nbytes


class WeightsChunk(Message, tag=schema_tag("weights_chunk"), kw_only=True):
    """One chunk of a version. On the zmq channel ``data`` is empty and the chunk's bytes follow as the next
    frame of the same multipart message (received straight into the version's buffer, never re-encoded)."""

    KIND: ClassVar[str] = "weights_chunk"
    version: NonNegInt
    index: NonNegInt
    data: _Bin = b""


# A relay endpoint as receivers advertise it (``tcp://host:port``; "" = none). Receivers connect to what the
# hub passes on, so anything else (a peer's garbage) is rejected on decode instead of reaching a connect().
_Endpoint = Annotated[str, Meta(max_length=MAX_ID_LEN,
                                pattern=r"^(?:tcp://(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})?\Z")]


class WeightsRequest(Message, tag=schema_tag("weights_request"), kw_only=True):
    """Receiver -> hub on the zmq weights channel (see rlef.common.weights.zmq): ``get`` asks for a version
    newer than ``version`` (the hub answers with its manifest, or a control ack naming its current version);
    ``fetch`` asks for chunk ``index`` of ``version`` (answered with the chunk, or the newer manifest that
    superseded it)."""

    KIND: ClassVar[str] = "weights_request"
    op: Literal["get", "fetch"]
    receiver_id: ID
    version: Annotated[int, Meta(ge=-1)] = -1
    index: NonNegInt = 0
    relay: _Endpoint = ""  # get: where this receiver serves peers ("" none)
    dead: _Endpoint = ""  # get: a relay endpoint this receiver saw die


class WeightsSource(Message, tag=schema_tag("weights_source"), kw_only=True):
    """Hub -> receiver, just before a manifest: fetch that version's chunks from ``endpoint`` (a peer that
    relays them) instead of the hub (``""``). See rlef.common.weights.zmq (fan-out)."""

    KIND: ClassVar[str] = "weights_source"
    version: NonNegInt
    endpoint: _Endpoint = ""


# ---------------------------------------------------------------- control


class Control(Message, tag=schema_tag("control"), kw_only=True):
    """Registration, heartbeats, version announcements and stop requests between the hub and its peers."""

    KIND: ClassVar[str] = "control"
    op: Literal["register", "heartbeat", "version", "stop", "ack"]
    sender_id: ID
    role: Literal["actor", "learner", "executor", "broker", "launcher"]
    version: Annotated[int, Meta(ge=-1)] = -1  # policy version the sender holds (-1: none yet)
    capabilities: Annotated[list[_Str], Meta(max_length=64)] = msgspec.field(default_factory=list)
    info: Annotated[dict[_Str, Union[_Str, int, Finite, bool]], Meta(max_length=64)] = msgspec.field(default_factory=dict)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (ExecutionJob, ExecutionResult, Rollout, WeightsManifest, WeightsChunk, WeightsRequest,
                               WeightsSource, Control)
}

for _cls in MESSAGE_TYPES.values():  # the Struct tag is the wire's schema field: they must never drift apart
    assert _cls.__struct_config__.tag == schema_name(_cls), _cls

_ENCODER = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    """The message as one msgpack map: ``schema`` first, then its fields in declaration order.

    The earlier (pydantic) encoder wrote ``schema`` last; both decode alike, but the receiver finds the tag
    at once when it comes first (at the end it scans the whole map for it: +2 us on an 8 KB rollout).
    """
    if not isinstance(message, Message):
        raise TypeError(f"encode takes a message, not {type(message).__name__}")
    return _ENCODER.encode(message)


# ---------------------------------------------------------------- packed arrays

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


def pack_ids(ids: Any) -> bytes:
    """Token ids (any int sequence or array) as little-endian int32 bytes."""
    return np.asarray(ids, dtype=_I32).tobytes()


def unpack_ids(data: bytes) -> np.ndarray:
    """A read-only int32 view of ``data`` (no copy); MessageError if its length is not a multiple of 4."""
    return _view(data, _I32, "int32 token ids")


def pack_floats(values: Any) -> bytes:
    """Floats (e.g. log-probabilities) as little-endian float32 bytes."""
    return np.asarray(values, dtype=_F32).tobytes()


def unpack_floats(data: bytes) -> np.ndarray:
    """A read-only float32 view of ``data`` (no copy); MessageError if its length is not a multiple of 4."""
    return _view(data, _F32, "float32 values")


def _view(data: bytes, dtype: np.dtype, what: str) -> np.ndarray:
    if len(data) % 4:
        raise MessageError(f"{len(data)} bytes is not a whole number of {what}")
    return np.frombuffer(data, dtype=dtype)
