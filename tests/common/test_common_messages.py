"""Wire schemas (rlef.common.protocol.messages): round-trips (hypothesis), every validation bound, a 10,000-frame
fuzz that must only ever raise MessageError, and the allocation bound of decoding hostile frames."""

from __future__ import annotations

import copy
import math
import random
import struct
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlef.common.errors import MessageError
from rlef.common.protocol.base import MAX_CODE_BYTES, MAX_ID_LEN, MAX_TURNS, SCHEMA_VERSION, Message, schema_name
from rlef.common.protocol.decoding import decode
from rlef.common.protocol.messages import (
    DTYPE_BYTES,
    MESSAGE_TYPES,
    Control,
    ExecutionJob,
    ExecutionResult,
    FinalOutcome,
    Limits,
    Rollout,
    TensorSpec,
    TestCase as CaseIO,  # aliased: pytest would try to collect Test* names
    TestResult as ResultIO,
    TestsRef as RefIO,
    Turn,
    TurnOutcome,
    WeightsChunk,
    WeightsManifest,
    WeightsRequest,
    WeightsSource,
    encode,
    pack_floats,
    pack_ids,
    unpack_floats,
    unpack_ids,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

ids = st.text(min_size=1, max_size=40)
small_text = st.text(max_size=200)
i64 = st.integers(min_value=0, max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
statuses = st.sampled_from(["pass", "wrong_answer", "runtime_error", "timeout", "oom", "output_limit", "syntax_error", "sandbox_error"])
turn_statuses = st.one_of(statuses, st.just("no_code"))
int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)

limits = st.builds(
    Limits,
    time_s=st.floats(min_value=1e-3, max_value=3600.0),
    memory_bytes=st.integers(min_value=1, max_value=1 << 40),
)
tests_ref = st.builds(
    RefIO,
    dataset=st.sampled_from(["codecontests", "humaneval", "sample"]),
    split=st.text(min_size=1, max_size=64),
    problem_id=ids,
    test_set=st.sampled_from(["public", "private", "generated", "public+private", "all"]),
    path=st.none() | st.text(max_size=100),
)


@st.composite
def execution_jobs(draw: st.DrawFn) -> ExecutionJob:
    inline = draw(st.booleans())
    return ExecutionJob(
        job_id=draw(ids),
        code=draw(small_text),
        tests=draw(st.lists(st.builds(CaseIO, input=small_text, output=small_text), max_size=5)) if inline else None,
        tests_ref=None if inline else draw(tests_ref),
        limits=draw(limits),
        stop_on_first_failure=draw(st.booleans()),
    )


@st.composite
def execution_results(draw: st.DrawFn) -> ExecutionResult:
    tests = draw(
        st.lists(
            st.builds(ResultIO, status=statuses, stdout=small_text, stderr=small_text, time_s=nonneg,
                      exit_code=st.none() | st.integers(-255, 255)),
            max_size=5,
        )
    )
    return ExecutionResult(
        job_id=draw(ids),
        worker_id=draw(st.text(max_size=40)),
        compile_ok=draw(st.booleans()),
        compile_message=draw(small_text),
        tests=tests,
        tests_total=len(tests) + draw(st.integers(0, 5)),
        error=draw(small_text),
        attempts=draw(st.integers(1, 10)),
        seconds=draw(nonneg),
    )


@st.composite
def turn_outcomes(draw: st.DrawFn) -> TurnOutcome:
    total = draw(st.integers(0, 1000))
    return TurnOutcome(status=draw(turn_statuses), public_passed=draw(st.integers(0, total)), public_total=total)


@st.composite
def turns(draw: st.DrawFn) -> Turn:
    response = draw(st.lists(int32s, min_size=1, max_size=50))
    return Turn(
        prompt_ids=pack_ids(draw(st.lists(int32s, max_size=50))),
        response_ids=pack_ids(response),
        logprobs=pack_floats(draw(st.lists(float32s, min_size=len(response), max_size=len(response)))),
        policy_version=draw(st.integers(0, 2**40)),
        has_code=draw(st.booleans()),
        outcome=draw(turn_outcomes()),
    )


@st.composite
def rollouts(draw: st.DrawFn) -> Rollout:
    episode = draw(st.lists(turns(), min_size=1, max_size=4))
    total = draw(st.integers(0, 100))
    return Rollout(
        rollout_id=draw(ids),
        actor_id=draw(ids),
        problem_id=draw(ids),
        turns=episode,
        final=FinalOutcome(passed=draw(st.booleans()), status=draw(turn_statuses),
                           tests_passed=draw(st.integers(0, total)), tests_total=total),
        rewards=draw(st.lists(finite, min_size=len(episode), max_size=len(episode))),
        timings=draw(st.dictionaries(st.text(max_size=20), nonneg, max_size=5)),
        random_feedback=draw(st.booleans()),
    )


@st.composite
def manifests(draw: st.DrawFn) -> WeightsManifest:
    specs, offset = [], 0
    for index in range(draw(st.integers(0, 6))):
        shape = draw(st.lists(st.integers(0, 64), max_size=4))
        dtype = draw(st.sampled_from(sorted(DTYPE_BYTES)))
        offset += draw(st.integers(0, 16))  # alignment padding
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        specs.append(TensorSpec(name=f"layer.{index}.weight", shape=shape, dtype=dtype, offset=offset, nbytes=nbytes))
        offset += nbytes
    total = offset + draw(st.integers(0, 64))
    chunk = draw(st.integers(1, 4096))
    chunk = max(chunk, -(-total // 256))  # at most 256 chunks: 8 checksum bytes each
    return WeightsManifest(
        version=draw(i64), tensors=specs, total_bytes=total, chunk_bytes=chunk, num_chunks=-(-total // chunk),
        chunk_xxh3=draw(st.binary(min_size=8 * -(-total // chunk), max_size=8 * -(-total // chunk))),
        checksum=draw(st.binary(min_size=8, max_size=8)).hex(),
    )


chunks = st.builds(WeightsChunk, version=i64, index=i64, data=st.binary(max_size=2000))
controls = st.builds(
    Control,
    op=st.sampled_from(["register", "heartbeat", "version", "stop", "ack"]),
    sender_id=ids,
    role=st.sampled_from(["actor", "learner", "executor", "broker", "launcher"]),
    version=st.integers(-1, 2**40),
    capabilities=st.lists(st.text(max_size=20), max_size=8),
    info=st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), finite, st.booleans()), max_size=8),
)

STRATEGIES: dict[str, st.SearchStrategy[Message]] = {
    "execution_job": execution_jobs(),
    "execution_result": execution_results(),
    "rollout": rollouts(),
    "weights_manifest": manifests(),
    "weights_chunk": chunks,
    "control": controls,
}
# Relay endpoints as receivers advertise them ("" none); anything else fails decode (test_relay_endpoints_are_checked).
relay_endpoints = st.one_of(st.just(""), st.builds(
    "tcp://{}:{}".format, st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}\Z"), st.just("[::1]")), st.integers(1, 65535)))
if "weights_request" in MESSAGE_TYPES:  # the zmq weights channel's request (rlef.common.weights.zmq)
    STRATEGIES["weights_request"] = st.builds(
        MESSAGE_TYPES["weights_request"], op=st.sampled_from(["get", "fetch"]), receiver_id=ids,
        version=st.integers(-1, 2**40), index=st.integers(0, 2**40), relay=relay_endpoints,
        dead=relay_endpoints,
    )
if "weights_source" in MESSAGE_TYPES:  # fan-out: which peer relays a version's chunks
    STRATEGIES["weights_source"] = st.builds(MESSAGE_TYPES["weights_source"], version=i64, endpoint=relay_endpoints)

# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@PROPERTY
@given(data=st.data())
def test_round_trip_every_kind(kind: str, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[kind])
    assert message.KIND == kind
    frame = encode(message)
    assert isinstance(frame, bytes)
    assert decode(frame) == message
    assert decode(frame, type(message)) == message
    assert decode(frame, (Control, type(message))) == message
    assert msgpack.unpackb(frame)["schema"] == f"rlef.{message.KIND}/{SCHEMA_VERSION}"


def test_every_kind_has_a_strategy_and_a_schema_name() -> None:
    # A new message kind needs a round-trip strategy above.
    assert set(MESSAGE_TYPES) <= set(STRATEGIES)
    assert {"execution_job", "execution_result", "rollout", "weights_manifest", "weights_chunk", "control"} <= set(MESSAGE_TYPES)
    assert {schema_name(cls) for cls in MESSAGE_TYPES.values()} == {f"rlef.{k}/{SCHEMA_VERSION}" for k in MESSAGE_TYPES}


@PROPERTY
@given(values=st.lists(int32s, max_size=300))
def test_pack_ids_round_trip(values: list[int]) -> None:
    data = pack_ids(values)
    assert len(data) == 4 * len(values)
    assert data == struct.pack(f"<{len(values)}i", *values)  # independent reference: little-endian int32
    assert unpack_ids(data).tolist() == values


@PROPERTY
@given(values=st.lists(st.floats(width=32), max_size=300))
def test_pack_floats_round_trip(values: list[float]) -> None:
    data = pack_floats(values)
    assert data == struct.pack(f"<{len(values)}f", *values)
    back = unpack_floats(data)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.array(values, dtype=np.float32))


@PROPERTY
@given(message=rollouts())
def test_rollout_token_views(message: Rollout) -> None:
    turn = message.turns[0]
    assert len(unpack_ids(turn.response_ids)) == turn.num_response_tokens == len(unpack_floats(turn.logprobs))
    assert message.num_tokens == sum(len(unpack_ids(t.prompt_ids)) + len(unpack_ids(t.response_ids)) for t in message.turns)
    assert message.oldest_version == min(t.policy_version for t in message.turns)


@pytest.mark.parametrize("helper", [unpack_ids, unpack_floats])
def test_unpack_helpers_reject_partial_elements(helper: Any) -> None:
    with pytest.raises(MessageError, match="6 bytes"):
        helper(b"\x00" * 6)


# ---------------------------------------------------------------- validation

RNG = np.random.default_rng(0)


def make_rollout(num_turns: int = 3) -> Rollout:
    episode = [
        Turn(prompt_ids=pack_ids(RNG.integers(0, 128_000, 40)), response_ids=pack_ids(RNG.integers(0, 128_000, 30)),
             logprobs=pack_floats(-RNG.random(30)), policy_version=3, has_code=True,
             outcome=TurnOutcome(status="wrong_answer", public_passed=1, public_total=2))
        for _ in range(num_turns)
    ]
    return Rollout(rollout_id="a0/1", actor_id="a0", problem_id="p1", turns=episode,
                   final=FinalOutcome(passed=False, status="wrong_answer", tests_passed=3, tests_total=9),
                   rewards=[0.0] * (num_turns - 1) + [-1.0], timings={"generate_s": 1.0})


VALID: dict[str, Message] = {
    "execution_job": ExecutionJob(job_id="j1", code="print(input())", tests=[CaseIO(input="1\n", output="1\n")],
                                  limits=Limits(time_s=10.0, memory_bytes=1 << 30)),
    "execution_result": ExecutionResult(job_id="j1", compile_ok=True, tests=[ResultIO(status="pass")], tests_total=1),
    "rollout": make_rollout(),
    "weights_manifest": WeightsManifest(
        version=1, tensors=[TensorSpec(name="w", shape=[2, 3], dtype="float32", offset=0, nbytes=24),
                            TensorSpec(name="b", shape=[3], dtype="bfloat16", offset=32, nbytes=6)],
        total_bytes=38, chunk_bytes=16, num_chunks=3, chunk_xxh3=bytes(24), checksum="0" * 16),
    "weights_chunk": WeightsChunk(version=1, index=0, data=b"\x00" * 16),
    "control": Control(op="register", sender_id="actor-0", role="actor", capabilities=["vllm"], info={"k": 1}),
}


def payload(kind: str) -> dict[str, Any]:
    message = VALID[kind]
    out = message.to_builtins()
    out["schema"] = schema_name(type(message))
    return copy.deepcopy(out)


def mutated(kind: str, path: str, value: Any) -> bytes:
    """The valid message of ``kind`` with the dotted ``path`` set to ``value`` (``DELETE`` removes it)."""
    tree = payload(kind)
    node: Any = tree
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return msgpack.packb(tree, use_bin_type=True)


DELETE = object()
F = pack_floats([0.5])

INVALID = [
    # (kind, dotted path, new value, field named in the error)
    # wrong types: strict validation never coerces
    ("execution_job", "job_id", 7, "job_id"),
    ("execution_job", "code", b"print(1)", "code"),
    ("execution_job", "limits.time_s", "10", "limits.time_s"),
    ("execution_job", "stop_on_first_failure", 1, "stop_on_first_failure"),
    ("execution_job", "tests", {"input": "1"}, "tests"),
    ("execution_job", "tests.0.input", None, "tests.0.input"),
    ("execution_result", "tests_total", 1.0, "tests_total"),
    ("execution_result", "tests.0.status", "passed", "tests.0.status"),
    ("rollout", "turns.0.prompt_ids", "abcd", "turns.0.prompt_ids"),
    ("rollout", "turns.0.has_code", 1, "turns.0.has_code"),
    ("rollout", "turns.1.policy_version", 2.0, "turns.1.policy_version"),
    ("rollout", "rewards", [0.0, 0.0, "1"], "rewards.2"),
    ("rollout", "turns", "x", "turns"),
    ("weights_chunk", "data", "text", "data"),
    ("control", "info", {"k": [1]}, "info.k"),  # the dict key is named, found again in the payload
    ("control", "op", "reboot", "op"),
    ("control", "role", "admin", "role"),
    # bounds
    ("execution_job", "job_id", "x" * (MAX_ID_LEN + 1), "job_id"),
    ("execution_job", "job_id", "", "job_id"),
    ("execution_job", "code", "x" * (MAX_CODE_BYTES + 1), "code"),
    ("execution_job", "limits.time_s", 0.0, "limits.time_s"),
    ("execution_job", "limits.time_s", 3601.0, "limits.time_s"),
    ("execution_job", "limits.memory_bytes", 0, "limits.memory_bytes"),
    ("execution_result", "attempts", 0, "attempts"),
    ("execution_result", "seconds", -1.0, "seconds"),
    ("execution_result", "seconds", float("inf"), "seconds"),
    ("rollout", "turns.0.policy_version", -1, "turns.0.policy_version"),
    ("rollout", "timings", {"t": float("nan")}, "timings.t"),
    ("rollout", "rewards", [0.0, 0.0, float("nan")], "rewards.2"),
    ("rollout", "rewards", [0.0, 0.0, float("-inf")], "rewards.2"),
    ("rollout", "turns.0.outcome.public_passed", 3, "turns.0.outcome"),
    ("rollout", "final.tests_passed", 10, "final"),
    ("control", "version", -2, "version"),
    ("control", "capabilities", ["c"] * 65, "capabilities"),
    ("weights_chunk", "index", -1, "index"),
    # unknown and missing fields
    ("rollout", "extra", 1, "extra"),
    ("rollout", "turns.0.outcome.extra", 1, "turns.0.outcome.extra"),
    ("rollout", "final", DELETE, "final"),
    ("execution_job", "limits", DELETE, "limits"),
    # cross-field consistency
    ("rollout", "turns.0.logprobs", F * 29, "turns.0"),  # 29 logprobs for 30 response tokens
    ("rollout", "turns.0.prompt_ids", b"\x00" * 7, "turns.0"),  # not whole int32s
    ("rollout", "turns.0.response_ids", b"", "turns.0.response_ids"),
    ("rollout", "rewards", [0.0, 1.0], None),  # 2 rewards for 3 turns
    ("execution_job", "tests_ref", {"dataset": "sample", "split": "train", "problem_id": "p", "test_set": "public"}, None),
    ("execution_job", "tests", None, None),  # neither inline tests nor a reference
    ("execution_result", "tests_total", 0, None),  # 1 result for 0 tests
    # manifest layout
    ("weights_manifest", "num_chunks", 2, None),
    ("weights_manifest", "chunk_bytes", 0, "chunk_bytes"),
    ("weights_manifest", "total_bytes", 37, None),  # last tensor ends past the payload
    ("weights_manifest", "tensors.1.offset", 20, None),  # overlaps the first
    ("weights_manifest", "tensors.0.nbytes", 20, "tensors.0"),  # not 2*3*4
    ("weights_manifest", "tensors.0.shape", [-2, -3], "tensors.0.shape.0"),
    ("weights_manifest", "tensors.0.dtype", "float64", "tensors.0.dtype"),
    ("weights_manifest", "checksum", "g" * 16, "checksum"),
    ("weights_manifest", "chunk_xxh3", bytes(16), None),  # 2 checksums for 3 chunks
    ("weights_manifest", "total_bytes", 1 << 50, "total_bytes"),
]


@pytest.mark.parametrize("kind,path,value,field", INVALID, ids=[f"{k}:{p}" for k, p, _, _ in INVALID])
def test_invalid_field_is_a_message_error_naming_field_and_kind(kind: str, path: str, value: Any, field: str | None) -> None:
    frame = mutated(kind, path, value)
    with pytest.raises(MessageError) as info:
        decode(frame, sender="tcp://10.0.0.7:5555")
    err = info.value
    assert err.kind == kind
    assert err.sender == "tcp://10.0.0.7:5555" and "sender=tcp://10.0.0.7:5555" in str(err)
    if field is not None:
        assert err.field == field


@pytest.mark.parametrize("endpoint,ok", [
    ("", True), ("tcp://127.0.0.1:5555", True), ("tcp://node-3.cluster.local:40001", True), ("tcp://[::1]:9", True),
    ("garbage", False), ("tcp://127.0.0\x191:1", False), ("tcp://a:1\n", False), ("tcp://a b:1", False),
    ("ipc:///tmp/x", False), ("tcp://a:", False),
])
def test_relay_endpoints_are_checked(endpoint: str, ok: bool) -> None:
    """A receiver connects to the relay endpoint the hub passes on from another receiver: found by fuzzing the
    hub, one ``get`` naming an endpoint ZeroMQ cannot parse killed the transfer thread of the next relaying
    receiver (tests/learner/test_learner_fuzz.py). Only ``tcp://host:port`` (or "") decodes now."""
    frames = [encode(WeightsRequest(op="get", receiver_id="r", relay=endpoint)),
              encode(WeightsRequest(op="get", receiver_id="r", dead=endpoint)),
              encode(WeightsSource(version=1, endpoint=endpoint))]
    for frame in frames:
        if ok:
            decode(frame)
        else:
            with pytest.raises(MessageError) as info:
                decode(frame)
            assert info.value.field in ("relay", "dead", "endpoint")


def test_valid_base_messages_decode() -> None:
    # The negative cases above mutate these: each must be valid as it stands, or those tests prove nothing.
    for kind, message in VALID.items():
        assert decode(msgpack.packb(payload(kind), use_bin_type=True)) == message


@pytest.mark.parametrize(
    "schema,match",
    [
        (f"rlef.rollout/{SCHEMA_VERSION + 1}", "version"),
        ("rlef.rollout/0", "version"),
        ("rlef.rollout/", "version"),
        ("rlef.rollout", "version"),
        ("rlef.bogus/1", "unknown schema"),
        ("rollout/1", "unknown schema"),
        ("", "unknown schema"),
        (None, "schema"),
        (1, "schema"),
        (b"rlef.rollout/1", "schema"),
    ],
)
def test_schema_name_and_version_checked(schema: Any, match: str) -> None:
    tree = payload("rollout")
    tree["schema"] = schema
    with pytest.raises(MessageError, match=match) as info:
        decode(msgpack.packb(tree, use_bin_type=True))
    assert info.value.field == "schema"


def test_missing_schema() -> None:
    tree = payload("control")
    del tree["schema"]
    with pytest.raises(MessageError, match="schema"):
        decode(msgpack.packb(tree))


def test_wrong_expected_kind() -> None:
    frame = encode(VALID["control"])
    with pytest.raises(MessageError, match="unexpected message kind control") as info:
        decode(frame, Rollout)
    assert info.value.kind == "control"
    with pytest.raises(MessageError, match="expected rollout, weights_chunk"):
        decode(frame, (Rollout, WeightsChunk))
    assert decode(frame, (Rollout, Control)) == VALID["control"]


@pytest.mark.parametrize(
    "frame,match",
    [
        (b"", "not a msgpack"),
        (b"\xc1", "not a msgpack"),  # reserved byte
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb(5), "not a map"),
        (msgpack.packb({1: 2}), "not a msgpack"),  # non-string key
        (encode(VALID["control"]) + b"\x00", "ExtraData"),  # trailing garbage
        (encode(VALID["control"])[:-1], "not a msgpack"),  # truncated
        (b"\xd4\x01\x01", "not a msgpack"),  # ext types are never used
    ],
)
def test_malformed_frames(frame: bytes, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        decode(frame)


@pytest.mark.parametrize("frame", ["text", None, 5, [b"x"]])
def test_non_bytes_frame(frame: Any) -> None:
    with pytest.raises(MessageError, match="not bytes"):
        decode(frame)


def test_memoryview_and_bytearray_frames() -> None:
    frame = encode(VALID["rollout"])
    assert decode(memoryview(frame)) == VALID["rollout"] == decode(bytearray(frame))


def test_frame_over_the_cap_is_rejected_unread() -> None:
    frame = encode(VALID["weights_chunk"])
    with pytest.raises(MessageError, match=f"frame of {len(frame)} bytes exceeds the 10-byte limit"):
        decode(frame, max_frame=10)
    assert decode(frame, max_frame=len(frame)) == VALID["weights_chunk"]


def test_long_top_level_lists_take_the_streaming_pass() -> None:
    # More than MAX_NESTED_LEN inline tests and tensor specs: the legitimate large messages.
    job = ExecutionJob(job_id="j", code="", tests=[CaseIO(input=str(i), output=str(i)) for i in range(3000)],
                       limits=Limits(time_s=1.0, memory_bytes=1 << 20))
    assert decode(encode(job), ExecutionJob) == job
    specs = [TensorSpec(name=f"t{i}", shape=[4], dtype="int32", offset=16 * i, nbytes=16) for i in range(500)]
    manifest = WeightsManifest(version=2, tensors=specs, total_bytes=8000, chunk_bytes=1000, num_chunks=8,
                               chunk_xxh3=bytes(64), checksum="a" * 16)
    assert decode(encode(manifest)) == manifest
    # ... and still reject a too-long nested list and trailing bytes on that path.
    tree = payload("execution_job")
    tree["tests"] = [{"input": "", "output": ""}] * 100
    tree["tests"][5]["input"] = ["x"] * 100
    with pytest.raises(MessageError, match="max_array_len"):
        decode(msgpack.packb(tree))
    with pytest.raises(MessageError, match="trailing"):
        decode(encode(job) + b"\xc0")


def test_too_many_turns() -> None:
    rollout = make_rollout(MAX_TURNS)
    assert decode(encode(rollout)) == rollout
    tree = payload("rollout")
    tree["turns"] = tree["turns"] * 22  # 66 turns
    tree["rewards"] = [0.0] * 66
    with pytest.raises(MessageError):
        decode(msgpack.packb(tree))


def test_error_text_is_bounded() -> None:
    # A peer cannot make our log lines as long as its (oversized) field names.
    tree = payload("control")
    tree["k" * 100_000] = 1
    with pytest.raises(MessageError) as info:
        decode(msgpack.packb(tree))
    assert len(str(info.value)) < 1000


# ---------------------------------------------------------------- wire compatibility and the pydantic-style API

# Frames written by the earlier pydantic encoder (``schema`` as the map's last key) for VALID["control"] and
# VALID["weights_chunk"]: the wire format did not change when the classes became msgspec Structs.
OLD_FRAMES = {
    "control": "87a26f70a87265676973746572a973656e6465725f6964a76163746f722d30a4726f6c65a56163746f72a776657273696f6eff"
               "ac6361706162696c697469657391a4766c6c6da4696e666f81a16b01a6736368656d61ae726c65662e636f6e74726f6c2f31",
    "weights_chunk": "84a776657273696f6e01a5696e64657800a464617461c41000000000000000000000000000000000a6736368656d61b4"
                     "726c65662e776569676874735f6368756e6b2f31",
}


@pytest.mark.parametrize("kind", sorted(OLD_FRAMES))
def test_frames_of_the_earlier_encoder_decode_and_re_encode_to_the_same_map(kind: str) -> None:
    old = bytes.fromhex(OLD_FRAMES[kind])
    assert decode(old) == VALID[kind]
    new = encode(VALID[kind])
    assert len(new) == len(old) and msgpack.unpackb(new) == msgpack.unpackb(old)  # only the key order differs


@pytest.mark.parametrize("kind", sorted(VALID))
def test_encode_writes_to_builtins_plus_schema(kind: str) -> None:
    # Independent reference: msgpack's own packing of the plain dict (the earlier encoder) is the same map.
    message = VALID[kind]
    reference = msgpack.packb({**message.to_builtins(), "schema": schema_name(type(message))}, use_bin_type=True)
    assert msgpack.unpackb(encode(message)) == msgpack.unpackb(reference)
    assert decode(reference) == message


def test_to_builtins_is_plain_data_without_the_tag() -> None:
    dump = VALID["rollout"].to_builtins()
    assert "schema" not in dump and isinstance(dump["turns"][0]["prompt_ids"], bytes)
    assert dump["final"] == {"passed": False, "status": "wrong_answer", "tests_passed": 3, "tests_total": 9}
    assert VALID["rollout"].turns[0].outcome.to_builtins() == {"status": "wrong_answer", "public_passed": 1, "public_total": 2}
    assert VALID["execution_job"].to_builtins()["tests_ref"] is None


def test_replace_replaces_fields_and_rechecks_cross_field_rules() -> None:
    rollout = VALID["rollout"]
    copy_ = rollout.replace(rollout_id="b")
    assert copy_.rollout_id == "b" and copy_.turns == rollout.turns and rollout.rollout_id == "a0/1"
    assert rollout.replace() == rollout
    with pytest.raises(ValueError, match="rewards"):
        rollout.replace(rewards=[1.0])
    with pytest.raises(AttributeError):
        rollout.rollout_id = "c"  # type: ignore[misc]  # frozen


def test_construction_checks_cross_field_rules_and_decode_checks_the_rest() -> None:
    # A Rollout checks the rules of its turns and final outcome (one Python call per decoded rollout).
    bad_turn = Turn(prompt_ids=b"", response_ids=pack_ids([1, 2]), logprobs=pack_floats([0.0]), policy_version=0,
                    has_code=False, outcome=TurnOutcome(status="no_code"))
    good = VALID["rollout"]
    with pytest.raises(ValueError, match="at turns.1: 1 logprobs for 2 response tokens"):
        good.replace(turns=[good.turns[0], bad_turn, good.turns[2]])
    with pytest.raises(ValueError, match="at final: tests_passed 2 > tests_total 1"):
        good.replace(final=FinalOutcome(passed=True, status="pass", tests_passed=2, tests_total=1))
    with pytest.raises(ValueError, match="exactly one"):
        ExecutionJob(job_id="j", code="", limits=Limits(time_s=1.0, memory_bytes=1))
    # Field constraints are not checked on keyword construction (documented), but every receiver decodes:
    unchecked = ExecutionJob(job_id="", code="", tests=[], limits=Limits(time_s=-1.0, memory_bytes=1))
    with pytest.raises(MessageError) as info:
        decode(encode(unchecked))
    assert info.value.field == "job_id"


# ---------------------------------------------------------------- hostile sizes: bounded before allocating


def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


HOSTILE = {
    "bin32 of 4 GiB": b"\xc6\xff\xff\xff\xff" + b"\x00" * 64,
    "str32 of 4 GiB": b"\xdb\xff\xff\xff\xff" + b"a" * 64,
    "array32 of 4G elements": _array32(0xFFFFFFFF) + b"\xc0" * 64,
    "map32 of 4G entries": b"\xdf\xff\xff\xff\xff" + b"\xa1a\xc0" * 20,
    "1000 nested arrays of 64K": _array32(1 << 16) * 1000,
    "1000 nested maps of 64K": (b"\xdf" + struct.pack(">I", 1 << 16) + b"\xa1a") * 1000,
    "top-level list of 4G elements": b"\x81\xa5tests" + _array32(0xFFFFFFFF) + b"\x80" * 64,
    "top-level list of nested 64K arrays": b"\x81\xa5tests" + _array32(1000) + _array32(1 << 16) * 1000,
    "top-level list declaring a 4 GiB bin": b"\x81\xa5tests" + _array32(100) + b"\xc6\xff\xff\xff\xff" * 100,
}
# The same declarations behind a valid schema field (first, as encode writes it), so that the typed fast
# path decodes them, not only the msgpack diagnostic pass.
_JOB, _ROLLOUT = msgpack.packb({"schema": "rlef.execution_job/1"}), msgpack.packb({"schema": "rlef.rollout/1"})
HOSTILE.update({
    "job: tests list of 4G elements": b"\x82" + _JOB[1:] + b"\xa5tests" + _array32(0xFFFFFFFF) + b"\x80" * 64,
    "job: tests list of 64K elements": b"\x82" + _JOB[1:] + b"\xa5tests" + _array32(1 << 16) + b"\x82\xa5input\xa0\xa6output\xa0" * 8,
    "job: code str of 4 GiB": b"\x82" + _JOB[1:] + b"\xa4code\xdb\xff\xff\xff\xff" + b"a" * 64,
    "rollout: rewards of 4G floats": b"\x82" + _ROLLOUT[1:] + b"\xa7rewards" + _array32(0xFFFFFFFF) + b"\x00" * 64,
    "rollout: turns of nested 64K arrays": b"\x82" + _ROLLOUT[1:] + b"\xa5turns" + _array32(60) + _array32(1 << 16) * 1000,
    "rollout: a turn's 4 GiB bin": b"\x82" + _ROLLOUT[1:] + b"\xa5turns\x91\x81\xaaprompt_ids\xc6\xff\xff\xff\xff" + b"\x00" * 64,
    "rollout: timings map of 4G entries": b"\x82" + _ROLLOUT[1:] + b"\xa7timings\xdf\xff\xff\xff\xff" + b"\xa1a\x00" * 20,
})


@pytest.mark.parametrize("frame", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_declared_sizes_rejected_without_allocating(frame: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(MessageError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Without the bounds these allocate from tens of megabytes up to gigabytes; the bound keeps the peak
    # within a small multiple of the frame (plus a fixed allowance for the unpacker's own state).
    assert peak < 32 * len(frame) + (1 << 20), f"peak {peak} bytes for a {len(frame)}-byte frame"


# ---------------------------------------------------------------- fuzz

FUZZ_FRAMES = 10_000


def _valid_corpus(rng: random.Random) -> list[bytes]:
    corpus = [encode(message) for message in VALID.values()]
    corpus.append(encode(ExecutionJob(job_id="big", code="x", tests=[CaseIO(input="1", output="2")] * 80,
                                      limits=Limits(time_s=1.0, memory_bytes=1 << 20))))
    corpus.append(encode(make_rollout(1)))
    return corpus


ODD_VALUES: list[Any] = [None, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", "x" * 300, b"\x00" * 3,
                         [], {}, [1] * 100, {"k": "v"}, True, "rlef.rollout/1"]


def _structured(frame: bytes, rng: random.Random) -> bytes:
    """Replace one value somewhere in a valid message with an odd one: reaches the validation layer."""
    tree = msgpack.unpackb(frame)
    parent: Any = tree
    key: Any = rng.choice(list(tree))
    for _ in range(rng.randrange(4)):
        child = parent[key]
        if isinstance(child, dict) and child:
            parent, key = child, rng.choice(list(child))
        elif isinstance(child, list) and child:
            parent, key = child, rng.randrange(len(child))
        else:
            break
    parent[key] = rng.choice(ODD_VALUES)
    return msgpack.packb(tree, use_bin_type=True)


def _mutate(frame: bytes, corpus: list[bytes], rng: random.Random) -> bytes:
    op = rng.randrange(8)
    if op >= 6:
        return _structured(frame, rng)
    data = bytearray(frame)
    if op == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del data[rng.randrange(len(data)):]
    elif op == 2:  # splice with another valid encoding
        other = rng.choice(corpus)
        data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    elif op == 3:  # random bytes overwritten, often header bytes that declare huge sizes
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] = rng.choice([0xC6, 0xDB, 0xDD, 0xDF, 0xFF, 0x00, rng.randrange(256)])
    elif op == 4:  # insert or delete a run of bytes
        position = rng.randrange(len(data) + 1)
        if rng.random() < 0.5:
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del data[position : position + rng.randint(1, 8)]
    else:  # duplicate a slice (repeats headers and containers)
        start = rng.randrange(len(data))
        end = min(len(data), start + rng.randint(1, 64))
        data[end:end] = data[start:end] * rng.randint(1, 4)
    return bytes(data)


@pytest.mark.timeout(120)
def test_fuzz_only_message_error() -> None:
    rng = random.Random(20250101)
    corpus = _valid_corpus(rng)
    outcomes = {"ok": 0, "error": 0}
    for index in range(FUZZ_FRAMES):
        if index % 4 == 0:
            frame = rng.randbytes(rng.randrange(0, 300))
        elif index % 4 == 1:  # random bytes behind a plausible map header
            frame = bytes([0x80 | rng.randrange(16)]) + rng.randbytes(rng.randrange(0, 300))
        else:
            frame = _mutate(rng.choice(corpus), corpus, rng)
        try:
            message = decode(frame)
        except MessageError:
            outcomes["error"] += 1
        else:
            assert isinstance(message, Message)  # a mutation that is still a valid message is fine
            outcomes["ok"] += 1
    # The mutations reach the validation layer, not only the msgpack layer: some survive, most do not.
    assert outcomes["error"] > FUZZ_FRAMES // 2
    assert outcomes["ok"] > 0
