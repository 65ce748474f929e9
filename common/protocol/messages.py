"""Wire schemas of every message between roles: msgpack maps decoded and validated by msgspec Structs.

Every message carries ``schema = "rlef.<kind>/<version>"`` (the Struct tag; written as the map's first key,
accepted at any position). ``decode`` bounds the frame's size, checks the schema name and version,
validates every field strictly (types, bounds, literals, patterns, finiteness, cross-field rules), and
raises exactly one error type, :class:`MessageError`, for anything malformed, so a receiver's loop is
``try: decode(...) except MessageError: count, log once, continue``.

Validation happens in the receiver, through :func:`decode`: msgspec checks every field's type and
constraint (``Meta``) while it decodes, then runs each Struct's ``__post_init__`` (the cross-field rules).
Constructing a message in Python runs ``__post_init__`` too (the cross-field rules; a Rollout checks
those of its turns and final outcome, so a lone Turn is checked when it is put into a Rollout), but NOT the
per-field type and constraint checks (msgspec does not type-check keyword construction): senders are our
own code, and every receiver validates the whole message on decode, so a sender's mistake is still caught,
at the receiver.

Decoding has two paths. The fast path decodes the frame straight into the message Structs (one C pass and
one Python call, ~3 us for an 8 KB rollout). Only when it fails does the diagnostic path run: the frame is
unpacked again by msgpack under the bounds below to name what is wrong (not msgpack, not a map, schema
name or version, unexpected kind) and, for a well-formed frame of a known kind, which field (dotted path,
e.g. ``turns.0.outcome``) failed validation. A malformed frame costs at most both passes.

Allocation bound: msgspec never allocates a string, bin, array or map for more elements than the frame
has bytes left (a declared length beyond the input is "truncated" before any allocation), and every list
field has a declared maximum length checked before its elements are decoded. The diagnostic pass keeps
the same guarantee with msgpack: no string, bin, array or map may declare more than the frame's own
length, and since msgpack pre-allocates a list for an array's declared length, its first pass admits only
containers of at most ``MAX_NESTED_LEN`` entries (every schema's maps and nested lists fit); a frame with a
longer top-level list (inline tests, tensor specs) is decoded again by a streaming pass that reads each
element of that list separately under the same small limits. Memory used while rejecting a frame stays
within a small multiple of the frame's length.

Token ids travel as little-endian int32 bytes and log-probabilities as little-endian float32 bytes: four
bytes a token instead of msgpack's up-to-nine, and decoding is a length check instead of a per-element walk.
Use :func:`pack_ids` / :func:`unpack_ids` and :func:`pack_floats` / :func:`unpack_floats`.

Every message has ``to_builtins()`` (a plain dict, bytes kept as bytes, without the ``schema`` tag) and
``replace(**changes)`` (a new message with the cross-field rules checked again), named after msgspec's own
functions. Messages are frozen, keyword-only and compare by value.
"""

from __future__ import annotations

import math
import re
import sys
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import msgpack
import msgspec
import numpy as np
from msgspec import Meta

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

# Wire bound on a job's code, far above executor.max_code_bytes (1 MiB by default), so that the executor's own
# check is the one that answers an oversized program with an error result naming its limit.
MAX_CODE_BYTES = 16 << 20
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


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
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


class Message(_Strict, tag_field="schema"):
    """A top-level message: ``KIND`` names it on the wire; its Struct tag is ``schema_name(cls)``."""

    KIND: ClassVar[str]


def _tag(kind: str) -> str:
    return f"rlef.{kind}/{SCHEMA_VERSION}"


# ---------------------------------------------------------------- execution


class TestCase(_Strict, kw_only=True):
    input: _IO
    output: _IO


class TestsRef(_Strict, kw_only=True):
    """Tests the executor looks up itself instead of receiving them inline."""

    dataset: Literal["codecontests", "humaneval", "sample"]
    split: Annotated[str, Meta(min_length=1, max_length=64)]
    problem_id: ID
    test_set: Literal["public", "private", "generated", "public+private", "all"]
    path: Annotated[str, Meta(max_length=4096)] | None = None  # dataset location on the executor host (codecontests)


class Limits(_Strict, kw_only=True):
    time_s: Annotated[float, Meta(gt=0, le=3600)]
    memory_bytes: Annotated[int, Meta(gt=0, le=1 << 40)]


class ExecutionJob(Message, tag=_tag("execution_job"), kw_only=True):
    KIND: ClassVar[str] = "execution_job"
    job_id: ID
    code: Annotated[str, Meta(max_length=MAX_CODE_BYTES)]
    tests: Annotated[list[TestCase], Meta(max_length=1 << 16)] | None = None
    tests_ref: TestsRef | None = None
    limits: Limits
    stop_on_first_failure: bool = False
    language: Literal["python"] = "python"

    def __post_init__(self) -> None:
        if (self.tests is None) == (self.tests_ref is None):
            raise ValueError("exactly one of tests (inline) and tests_ref must be given")


class TestResult(_Strict, kw_only=True):
    status: TestStatus
    stdout: _IO = ""  # truncated to the executor's cap
    stderr: _IO = ""  # tail, with sandbox paths cleaned
    time_s: NonNegative = 0.0
    exit_code: int | None = None
    # CPU seconds of every process the test started, and their peak memory together (from the test's cgroup;
    # of the test's own process only when the executor runs with weak limits). None: not measured.
    cpu_s: NonNegative | None = None
    memory_bytes: NonNegInt | None = None


class ExecutionResult(Message, tag=_tag("execution_result"), kw_only=True):
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


class TurnOutcome(_Strict, kw_only=True):
    status: TurnStatus
    public_passed: NonNegInt = 0  # at most public_total (checked by Rollout)
    public_total: NonNegInt = 0


class Turn(_Strict, kw_only=True):
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


class FinalOutcome(_Strict, kw_only=True):
    passed: bool  # the last program passed public + private tests
    status: TurnStatus
    tests_passed: NonNegInt
    tests_total: NonNegInt  # at least tests_passed (checked by Rollout)


class Rollout(Message, tag=_tag("rollout"), kw_only=True):
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


class TensorSpec(_Strict, kw_only=True):
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


class WeightsManifest(Message, tag=_tag("weights_manifest"), kw_only=True):
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


class WeightsChunk(Message, tag=_tag("weights_chunk"), kw_only=True):
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


class WeightsRequest(Message, tag=_tag("weights_request"), kw_only=True):
    """Receiver -> hub on the zmq weights channel (see rlef.common.weights.zmq_transport): ``get`` asks for a version
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


class WeightsSource(Message, tag=_tag("weights_source"), kw_only=True):
    """Hub -> receiver, just before a manifest: fetch that version's chunks from ``endpoint`` (a peer that
    relays them) instead of the hub (``""``). See rlef.common.weights.zmq_transport (fan-out)."""

    KIND: ClassVar[str] = "weights_source"
    version: NonNegInt
    endpoint: _Endpoint = ""


# ---------------------------------------------------------------- control


class Control(Message, tag=_tag("control"), kw_only=True):
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

M = TypeVar("M", bound=Message)


def schema_name(cls: type[Message]) -> str:
    return f"rlef.{cls.KIND}/{SCHEMA_VERSION}"


for _cls in MESSAGE_TYPES.values():  # the Struct tag is the wire's schema field: they must never drift apart
    assert _cls.__struct_config__.tag == schema_name(_cls), _cls

_ENCODER = msgspec.msgpack.Encoder()
# Decoding into the tagged union requires the schema field (a single tagged Struct would accept its absence).
_DECODER = msgspec.msgpack.Decoder(Union[tuple(MESSAGE_TYPES.values())])  # type: ignore[misc]
_KIND_DECODERS = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in MESSAGE_TYPES.items()}


def encode(message: Message) -> bytes:
    """The message as one msgpack map: ``schema`` first, then its fields in declaration order.

    The earlier (pydantic) encoder wrote ``schema`` last; both decode alike, but the receiver finds the tag
    at once when it comes first (at the end it scans the whole map for it: +2 us on an 8 KB rollout).
    """
    if not isinstance(message, Message):
        raise TypeError(f"encode takes a message, not {type(message).__name__}")
    return _ENCODER.encode(message)


def decode(
    frame: bytes,
    expected: type[M] | tuple[type[Message], ...] | None = None,
    *,
    sender: str | None = None,
    max_frame: int = MAX_FRAME_BYTES,
) -> M:
    """Decode and validate one frame; raise MessageError (naming sender, kind and field) on anything wrong.

    ``expected`` restricts the accepted kinds; ``max_frame`` lowers the size cap for a channel whose
    messages are known to be small.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MessageError(f"frame is {type(frame).__name__}, not bytes", sender=sender)
    size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if size > max_frame:
        raise MessageError(f"frame of {size} bytes exceeds the {max_frame}-byte limit", sender=sender)
    try:
        message = _DECODER.decode(frame)
    except _DECODE_ERRORS:
        raise _diagnose(frame, size, expected, sender) from None
    if expected is not None and not isinstance(message, expected):
        raise _unexpected(message.KIND, expected, sender)
    return message  # type: ignore[return-value]


# ---------------------------------------------------------------- diagnosis of a frame that failed to decode

_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, TypeError, OverflowError, RecursionError, MemoryError)
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}  # fixarray, array16, array32
_UNPACK_ERRORS = (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError, MemoryError)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _unexpected(kind: str, expected: type[Message] | tuple[type[Message], ...], sender: str | None) -> MessageError:
    names = ", ".join(c.KIND for c in (expected if isinstance(expected, tuple) else (expected,)))
    return MessageError(f"unexpected message kind {kind} (expected {names})", sender=sender, kind=kind)


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


def _unpack(frame: bytes | bytearray | memoryview, size: int) -> Any:
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


def _diagnose(
    frame: bytes | bytearray | memoryview, size: int, expected: Any, sender: str | None
) -> MessageError:
    """The MessageError for a frame the fast path rejected: what is wrong with it, and where."""
    try:
        payload = _unpack(frame, size)
    except MessageError as exc:
        return exc.with_sender(sender) if sender else exc
    if not isinstance(payload, dict):
        return MessageError(f"message is a msgpack {type(payload).__name__}, not a map", sender=sender)
    schema = payload.get("schema")
    if not isinstance(schema, str):
        return MessageError("missing or non-string 'schema' field", sender=sender, field="schema")
    kind, _, version = schema.removeprefix("rlef.").partition("/")
    cls = MESSAGE_TYPES.get(kind)
    if not schema.startswith("rlef.") or cls is None:
        return MessageError(f"unknown schema {schema[:80]!r}", sender=sender, field="schema")
    if version != str(SCHEMA_VERSION):
        return MessageError(
            f"schema version {version[:16]!r} of {kind} is not supported (this build speaks {SCHEMA_VERSION})",
            sender=sender, field="schema", kind=kind,
        )
    if expected is not None and not issubclass(cls, expected):
        return _unexpected(kind, expected, sender)
    try:
        _KIND_DECODERS[kind].decode(frame)
    except msgspec.ValidationError as exc:
        reason, field = _explain(exc, cls, payload)
        return MessageError(_clip(f"invalid {kind}: {reason}"), sender=sender, field=field, kind=kind)
    except _DECODE_ERRORS as exc:
        return MessageError(_clip(f"invalid {kind}: {type(exc).__name__}: {exc}"), sender=sender, kind=kind)
    # Unreachable for frames msgspec and msgpack agree on; never let a rejected frame through unexplained.
    return MessageError(f"invalid {kind}: rejected by the decoder", sender=sender, kind=kind)


_AT = re.compile(r" - at `\$(.*)`$", re.S)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(.*)`$", re.S)
_LOCATED = re.compile(r"^at ([A-Za-z0-9_.]+): (.*)$", re.S)
_NOT_FINITE = re.compile(r"Expected `float` [<>]= -?1\.7976931348623157e\+308")


def _explain(exc: msgspec.ValidationError, cls: type[Message], payload: dict[str, Any]) -> tuple[str, str | None]:
    """msgspec's error text and ``$.turns[0].outcome`` path as (reason, dotted field path ``turns.0.outcome``).

    A dict value's path ends in ``[...]`` in msgspec's text; the key is found again in the unpacked payload.
    """
    text = str(exc)
    match = _AT.search(text)
    reason, raw_path = (text[: match.start()], match.group(1)) if match else (text, "")
    parts: list[str] = []
    node: Any = payload
    hint: Any = cls
    for name, index in _PATH_PART.findall(raw_path):
        if name:
            parts.append(name)
            node = node.get(name) if isinstance(node, dict) else None
            hint = _field_type(hint, name)
        elif index == "...":
            key = _failing_key(node, hint)
            parts.append(key if key is not None else "...")
            node = node.get(key) if isinstance(node, dict) and key is not None else None
            hint = _value_type(hint, dict)
        else:
            parts.append(index)
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
            hint = _value_type(hint, list)
    named = _NAMED_FIELD.match(reason)
    if named:
        parts.append(named.group(1))
    located = _LOCATED.match(reason)
    if located:  # a parent's __post_init__ naming the part it rejects (Rollout: turns.N, final)
        parts.extend(located.group(1).split("."))
        reason = located.group(2)
    reason = _NOT_FINITE.sub("Expected a finite `float`", reason)
    return reason, _clip(".".join(parts)) or None


def _strip(hint: Any) -> Any:
    """The container or Struct type inside Annotated[...] and ``X | None``."""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
            hint = args[0]
            continue
        return hint


def _field_type(hint: Any, name: str) -> Any:
    struct = _strip(hint)
    if isinstance(struct, type) and issubclass(struct, msgspec.Struct):
        return typing.get_type_hints(struct, include_extras=True).get(name)
    return None


def _value_type(hint: Any, container: type) -> Any:
    stripped = _strip(hint)
    if typing.get_origin(stripped) is container:
        return typing.get_args(stripped)[-1]
    return None


def _failing_key(node: Any, hint: Any) -> str | None:
    """The first key of dict ``node`` whose value does not validate as the dict's value type."""
    value_type = _value_type(hint, dict)
    if not isinstance(node, dict) or value_type is None:
        return None
    for key, value in node.items():
        try:
            msgspec.convert(value, value_type, strict=True)
        except msgspec.ValidationError:
            return str(key)
    return None


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
