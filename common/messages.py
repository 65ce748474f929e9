"""Wire schemas of every message between roles: msgpack maps validated by pydantic.

Every message carries ``schema = "rlef.<kind>/<version>"``. ``decode`` bounds every size before msgpack
allocates anything, checks the schema name and version, validates every field strictly, and raises exactly
one error type, :class:`MessageError`, for anything malformed, so a receiver's loop is
``try: decode(...) except MessageError: count, log once, continue``.

Allocation bound: no string, bin, array or map may declare more than the frame's own length (each element
costs at least one byte), and msgpack pre-allocates a list for an array's declared length, so nested
arrays could otherwise make a few kilobytes allocate tens of megabytes before failing. The first decoding
pass therefore admits only containers of at most ``MAX_NESTED_LEN`` entries (every schema's maps and
nested lists fit); a frame with a longer top-level list (inline tests, tensor specs) is decoded again by a
streaming pass that reads each element of that list separately under the same small limits. Memory used
while rejecting a frame stays within a small multiple of the frame's length.

Token ids travel as little-endian int32 bytes and log-probabilities as little-endian float32 bytes: four
bytes a token instead of msgpack's up-to-nine, and decoding is a length check instead of a per-element walk.
Use :func:`pack_ids` / :func:`unpack_ids` and :func:`pack_floats` / :func:`unpack_floats`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlef.common.errors import MessageError

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

MAX_CODE_BYTES = 1 << 20
MAX_TEST_IO_BYTES = 64 << 20
MAX_TURNS = 64
MAX_ID_LEN = 256

TestStatus = Literal[
    "pass", "wrong_answer", "runtime_error", "timeout", "oom", "output_limit", "syntax_error", "sandbox_error"
]
# A turn's outcome is a test status, or "no_code" when the response held no program to run.
TurnStatus = Literal[
    "pass", "wrong_answer", "runtime_error", "timeout", "oom", "output_limit", "syntax_error", "sandbox_error", "no_code"
]
ID = Field(min_length=1, max_length=MAX_ID_LEN)


class _Strict(BaseModel):
    # allow_inf_nan=False: no field of any message has a meaning for NaN or infinity.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Message(_Strict):
    """A top-level message: ``KIND`` names it on the wire."""

    KIND: ClassVar[str]


# ---------------------------------------------------------------- execution


class TestCase(_Strict):
    input: str = Field(max_length=MAX_TEST_IO_BYTES)
    output: str = Field(max_length=MAX_TEST_IO_BYTES)


class TestsRef(_Strict):
    """Tests the executor looks up itself instead of receiving them inline."""

    dataset: Literal["codecontests", "humaneval", "sample"]
    split: str = Field(min_length=1, max_length=64)
    problem_id: str = ID
    test_set: Literal["public", "private", "generated", "public+private", "all"]
    path: str | None = Field(None, max_length=4096, description="Dataset location on the executor host (codecontests).")


class Limits(_Strict):
    time_s: float = Field(gt=0, le=3600)
    memory_bytes: int = Field(gt=0, le=1 << 40)


class ExecutionJob(Message):
    KIND: ClassVar[str] = "execution_job"
    job_id: str = ID
    code: str = Field(max_length=MAX_CODE_BYTES)
    tests: list[TestCase] | None = Field(None, max_length=1 << 16)
    tests_ref: TestsRef | None = None
    limits: Limits
    stop_on_first_failure: bool = False
    language: Literal["python"] = "python"

    @model_validator(mode="after")
    def _one_test_source(self) -> "ExecutionJob":
        if (self.tests is None) == (self.tests_ref is None):
            raise ValueError("exactly one of tests (inline) and tests_ref must be given")
        return self


class TestResult(_Strict):
    status: TestStatus
    stdout: str = Field("", max_length=MAX_TEST_IO_BYTES, description="Truncated to the executor's cap.")
    stderr: str = Field("", max_length=MAX_TEST_IO_BYTES, description="Tail, with sandbox paths cleaned.")
    time_s: float = Field(0.0, ge=0)
    exit_code: int | None = None


class ExecutionResult(Message):
    KIND: ClassVar[str] = "execution_result"
    job_id: str = ID
    worker_id: str = Field("", max_length=MAX_ID_LEN)
    compile_ok: bool
    compile_message: str = Field("", max_length=1 << 20)
    tests: list[TestResult] = Field(default_factory=list, max_length=1 << 16)
    tests_total: int = Field(ge=0, description="Tests in the job; more than len(tests) when it stopped on a failure.")
    error: str = Field("", max_length=1 << 20, description="Why the job as a whole is sandbox_error (empty otherwise).")
    attempts: int = Field(1, ge=1)
    seconds: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _tests_within_total(self) -> "ExecutionResult":
        if len(self.tests) > self.tests_total:
            raise ValueError(f"{len(self.tests)} test results for tests_total={self.tests_total}")
        return self

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


class TurnOutcome(_Strict):
    status: TurnStatus
    public_passed: int = Field(0, ge=0)
    public_total: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _passed_within_total(self) -> "TurnOutcome":
        if self.public_passed > self.public_total:
            raise ValueError(f"public_passed {self.public_passed} > public_total {self.public_total}")
        return self


class Turn(_Strict):
    prompt_ids: bytes = Field(max_length=MAX_BIN_BYTES, description="int32 LE: the new prompt segment of this turn.")
    response_ids: bytes = Field(min_length=4, max_length=MAX_BIN_BYTES, description="int32 LE: the sampled response.")
    logprobs: bytes = Field(max_length=MAX_BIN_BYTES, description="float32 LE: behaviour log-prob of each response token.")
    policy_version: int = Field(ge=0)
    has_code: bool
    outcome: TurnOutcome

    @model_validator(mode="after")
    def _lengths(self) -> "Turn":
        if len(self.prompt_ids) % 4 or len(self.response_ids) % 4:
            raise ValueError("token id buffers must be int32 (length a multiple of 4)")
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(f"{len(self.logprobs) // 4} logprobs for {len(self.response_ids) // 4} response tokens")
        return self

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids) // 4

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids) // 4


class FinalOutcome(_Strict):
    passed: bool = Field(description="The last program passed public + private tests.")
    status: TurnStatus
    tests_passed: int = Field(ge=0)
    tests_total: int = Field(ge=0)

    @model_validator(mode="after")
    def _passed_within_total(self) -> "FinalOutcome":
        if self.tests_passed > self.tests_total:
            raise ValueError(f"tests_passed {self.tests_passed} > tests_total {self.tests_total}")
        return self


class Rollout(Message):
    KIND: ClassVar[str] = "rollout"
    rollout_id: str = ID
    actor_id: str = ID
    problem_id: str = ID
    turns: list[Turn] = Field(min_length=1, max_length=MAX_TURNS)
    final: FinalOutcome
    rewards: list[float] = Field(description="Task reward r_t of each turn (the KL term is the learner's).")
    timings: dict[str, float] = Field(default_factory=dict, max_length=64)
    random_feedback: bool = False

    @model_validator(mode="after")
    def _rewards_per_turn(self) -> "Rollout":
        if len(self.rewards) != len(self.turns):
            raise ValueError(f"{len(self.rewards)} rewards for {len(self.turns)} turns")
        # Finiteness of rewards is enforced by allow_inf_nan=False.
        return self

    @property
    def oldest_version(self) -> int:
        return min(t.policy_version for t in self.turns)

    @property
    def num_tokens(self) -> int:
        return sum(t.num_prompt_tokens + t.num_response_tokens for t in self.turns)


# ---------------------------------------------------------------- weights


DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}
MAX_WEIGHTS_BYTES = 1 << 40  # 1 TiB: a 70B model in float32 is 280 GB.


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=1024)
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=16)
    dtype: Literal["float32", "bfloat16", "float16", "int64", "int32", "uint8", "bool"]
    offset: int = Field(ge=0, description="Byte offset in the version's flat payload.")
    nbytes: int = Field(ge=0, description="Always prod(shape) * itemsize(dtype).")

    @model_validator(mode="after")
    def _nbytes_match_shape(self) -> "TensorSpec":
        expected = math.prod(self.shape) * DTYPE_BYTES[self.dtype]
        if self.nbytes != expected:
            raise ValueError(f"tensor {self.name[:80]} of shape {self.shape} {self.dtype} has nbytes {self.nbytes}, expected {expected}")
        return self


class WeightsManifest(Message):
    KIND: ClassVar[str] = "weights_manifest"
    version: int = Field(ge=0)
    tensors: list[TensorSpec] = Field(max_length=1 << 16)
    total_bytes: int = Field(ge=0, le=MAX_WEIGHTS_BYTES)
    chunk_bytes: int = Field(gt=0, le=MAX_BIN_BYTES, description="Every chunk but the last carries exactly this many bytes.")
    num_chunks: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the whole flat payload.")

    @model_validator(mode="after")
    def _layout(self) -> "WeightsManifest":
        if self.num_chunks != -(-self.total_bytes // self.chunk_bytes):
            raise ValueError(f"num_chunks {self.num_chunks} does not cover {self.total_bytes} bytes")
        end = 0
        for spec in self.tensors:
            if spec.offset < end or spec.offset + spec.nbytes > self.total_bytes:
                raise ValueError(f"tensor {spec.name[:80]} has byte range outside the payload or overlapping")
            end = spec.offset + spec.nbytes
        return self


class WeightsChunk(Message):
    KIND: ClassVar[str] = "weights_chunk"
    version: int = Field(ge=0)
    index: int = Field(ge=0)
    data: bytes = Field(max_length=MAX_BIN_BYTES)


class WeightsRequest(Message):
    """Receiver -> hub on the zmq weights channel (see rlef.common.weights.zmq_transport): ``get`` asks for a version
    newer than ``version`` (the hub answers with its manifest, or a control ack naming its current version);
    ``fetch`` asks for chunk ``index`` of ``version`` (answered with the chunk, or the newer manifest that
    superseded it)."""

    KIND: ClassVar[str] = "weights_request"
    op: Literal["get", "fetch"]
    receiver_id: str = ID
    version: int = Field(-1, ge=-1)
    index: int = Field(0, ge=0)


# ---------------------------------------------------------------- control


class Control(Message):
    """Registration, heartbeats, version announcements and stop requests between the hub and its peers."""

    KIND: ClassVar[str] = "control"
    op: Literal["register", "heartbeat", "version", "stop", "ack"]
    sender_id: str = ID
    role: Literal["actor", "learner", "executor", "broker", "launcher"]
    version: int = Field(-1, ge=-1, description="Policy version the sender holds (-1: none yet).")
    capabilities: list[str] = Field(default_factory=list, max_length=64)
    info: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=64)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (ExecutionJob, ExecutionResult, Rollout, WeightsManifest, WeightsChunk, WeightsRequest, Control)
}

M = TypeVar("M", bound=Message)


def schema_name(cls: type[Message]) -> str:
    return f"rlef.{cls.KIND}/{SCHEMA_VERSION}"


def encode(message: Message) -> bytes:
    payload = message.model_dump()
    payload["schema"] = schema_name(type(message))
    return msgpack.packb(payload, use_bin_type=True)


_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}  # fixarray, array16, array32
_UNPACK_ERRORS = (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError, MemoryError)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _limits(size: int, nested: int) -> dict[str, int]:
    # A declared length longer than the frame itself can never be satisfied: reject it before allocating.
    return {
        "max_str_len": min(MAX_STR_BYTES, size),
        "max_bin_len": min(MAX_BIN_BYTES, size),
        "max_array_len": min(nested, size),
        "max_map_len": min(nested, size),
        "max_ext_len": 0,
    }


# The first pass's limits for frames of at least this size: a str or bin declared longer than the frame is
# rejected by msgpack as incomplete input before it allocates, so only the container limits matter there.
_FIRST_PASS_MIN = MAX_NESTED_LEN
_FIRST_PASS = {**_limits(_FIRST_PASS_MIN, MAX_NESTED_LEN), "max_str_len": MAX_STR_BYTES, "max_bin_len": MAX_BIN_BYTES}


def _unpack_error(exc: BaseException) -> MessageError:
    # ExtraData's text quotes the whole decoded object: name the class only.
    detail = "" if isinstance(exc, msgpack.ExtraData) else f": {exc}"
    return MessageError(_clip(f"not a msgpack message: {type(exc).__name__}{detail}"))


def _unpack_long_lists(frame: bytes | bytearray | memoryview, size: int) -> dict[str, Any]:
    """Second pass for a top-level map holding a list longer than MAX_NESTED_LEN: each element of such a
    list is unpacked on its own under the small limits, so the list grows only with bytes actually read."""
    limits = _limits(size, MAX_NESTED_LEN)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=size, **limits)
    unpacker.feed(frame)
    entries = unpacker.read_map_header()
    if entries > MAX_NESTED_LEN:
        raise MessageError(f"top-level map of {entries} entries exceeds {MAX_NESTED_LEN}")
    out: dict[str, Any] = {}
    for _ in range(entries):
        key = unpacker.unpack()
        if not isinstance(key, str):
            raise MessageError(f"top-level key is a msgpack {type(key).__name__}, not a string")
        position = unpacker.tell()
        if position < size and frame[position] in _ARRAY_HEADERS:
            length = unpacker.read_array_header()
            if length > min(MAX_ARRAY_LEN, size - unpacker.tell()):
                raise MessageError(f"list of {length} elements exceeds the frame or the {MAX_ARRAY_LEN}-element limit", field=_clip(key))
            out[key] = [unpacker.unpack() for _ in range(length)]
        else:
            out[key] = unpacker.unpack()
    if unpacker.tell() != size:
        raise MessageError(f"{size - unpacker.tell()} bytes of trailing data after the message")
    return out


def _unpack(frame: bytes, max_frame: int) -> Any:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MessageError(f"frame is {type(frame).__name__}, not bytes")
    size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if size > max_frame:
        raise MessageError(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
    try:
        limits = _FIRST_PASS if size >= _FIRST_PASS_MIN else _limits(size, MAX_NESTED_LEN)
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, **limits)
    except ValueError as exc:
        if "exceeds max_array_len" not in str(exc):
            raise _unpack_error(exc) from None
    except _UNPACK_ERRORS as exc:
        raise _unpack_error(exc) from None
    try:
        return _unpack_long_lists(frame, size)
    except _UNPACK_ERRORS as exc:
        raise _unpack_error(exc) from None


def decode(
    frame: bytes,
    expected: type[M] | tuple[type[Message], ...] | None = None,
    *,
    sender: str | None = None,
    max_frame: int = MAX_FRAME_BYTES,
) -> M:
    """Decode and validate one frame; raise MessageError (naming sender, kind and field) on anything wrong.

    ``expected`` restricts the accepted kinds (checked before the costly validation); ``max_frame`` lowers
    the size cap for a channel whose messages are known to be small.
    """
    try:
        payload = _unpack(frame, max_frame)
    except MessageError as exc:
        raise exc.with_sender(sender) if sender else exc from None
    if not isinstance(payload, dict):
        raise MessageError(f"message is a msgpack {type(payload).__name__}, not a map", sender=sender)
    schema = payload.pop("schema", None)
    if not isinstance(schema, str):
        raise MessageError("missing or non-string 'schema' field", sender=sender, field="schema")
    kind, _, version = schema.removeprefix("rlef.").partition("/")
    cls = MESSAGE_TYPES.get(kind)
    if not schema.startswith("rlef.") or cls is None:
        raise MessageError(f"unknown schema {schema[:80]!r}", sender=sender, field="schema")
    if version != str(SCHEMA_VERSION):
        raise MessageError(
            f"schema version {version[:16]!r} of {kind} is not supported (this build speaks {SCHEMA_VERSION})",
            sender=sender, field="schema", kind=kind,
        )
    allowed = expected if isinstance(expected, tuple) else (expected,) if expected else None
    if allowed is not None and cls not in allowed:
        names = ", ".join(c.KIND for c in allowed)
        raise MessageError(f"unexpected message kind {kind} (expected {names})", sender=sender, kind=kind)
    try:
        return cls.model_validate(payload)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = _clip(".".join(str(p) for p in first["loc"])) or None
        reason = _clip(f"invalid {kind}: {first['msg']}") + f" ({exc.error_count()} errors)"
        raise MessageError(reason, sender=sender, field=field, kind=kind) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MessageError(_clip(f"invalid {kind}: {exc}"), sender=sender, kind=kind) from None


# ---------------------------------------------------------------- packed arrays

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


def pack_ids(ids: Any) -> bytes:
    """Token ids (any int sequence or array) as little-endian int32 bytes."""
    return np.asarray(ids, dtype=_I32).tobytes()


def unpack_ids(data: bytes) -> np.ndarray:
    """A read-only int32 view of ``data`` (no copy); MessageError if its length is not a multiple of 4."""
    if len(data) % 4:
        raise MessageError(f"{len(data)} bytes is not a whole number of int32 token ids")
    return np.frombuffer(data, dtype=_I32)


def pack_floats(values: Any) -> bytes:
    """Floats (e.g. log-probabilities) as little-endian float32 bytes."""
    return np.asarray(values, dtype=_F32).tobytes()


def unpack_floats(data: bytes) -> np.ndarray:
    """A read-only float32 view of ``data`` (no copy); MessageError if its length is not a multiple of 4."""
    if len(data) % 4:
        raise MessageError(f"{len(data)} bytes is not a whole number of float32 values")
    return np.frombuffer(data, dtype=_F32)
