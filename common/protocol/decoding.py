"""Decoding and validating one frame: :func:`decode`, and the diagnosis of a frame that fails to decode.

Validation happens in the receiver, through :func:`decode`: msgspec checks every field's type and
constraint (``Meta``) while it decodes, then runs each Struct's ``__post_init__`` (the cross-field rules).
The schemas and their bounds are in :mod:`rlef.common.protocol.messages` and :mod:`rlef.common.protocol.base`.

Decoding has two paths. The fast path decodes the frame straight into the message Structs (one C pass and
one Python call, ~3 us for an 8 KB rollout). Only when it fails does the diagnostic path run: the frame is
unpacked again by msgpack under the bounds of :mod:`~rlef.common.protocol.base` to name what is wrong (not
msgpack, not a map, schema name or version, unexpected kind) and, for a well-formed frame of a known kind,
which field (dotted path, e.g. ``turns.0.outcome``) failed validation. A malformed frame costs at most both passes.

Allocation bound: msgspec never allocates a string, bin, array or map for more elements than the frame
has bytes left (a declared length beyond the input is "truncated" before any allocation), and every list
field has a declared maximum length checked before its elements are decoded. The diagnostic pass keeps
the same guarantee with msgpack: no string, bin, array or map may declare more than the frame's own
length, and since msgpack pre-allocates a list for an array's declared length, its first pass admits only
containers of at most ``MAX_NESTED_LEN`` entries (every schema's maps and nested lists fit); a frame with a
longer top-level list (inline tests, tensor specs) is decoded again by a streaming pass that reads each
element of that list separately under the same small limits. Memory used while rejecting a frame stays
within a small multiple of the frame's length.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, TypeVar, Union

import msgpack
import msgspec

from rlef.common.errors import MessageError
from rlef.common.protocol.base import (
    MAX_ARRAY_LEN,
    MAX_BIN_BYTES,
    MAX_ERROR_CHARS,
    MAX_FRAME_BYTES,
    MAX_NESTED_LEN,
    MAX_STR_BYTES,
    SCHEMA_VERSION,
    Message,
)
from rlef.common.protocol.messages import MESSAGE_TYPES

M = TypeVar("M", bound=Message)

# Decoding into the tagged union requires the schema field (a single tagged Struct would accept its absence).
_DECODER = msgspec.msgpack.Decoder(Union[tuple(MESSAGE_TYPES.values())])  # type: ignore[misc]
_KIND_DECODERS = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in MESSAGE_TYPES.items()}


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
