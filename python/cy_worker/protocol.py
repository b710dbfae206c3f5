"""Codec for worker protocol versions 1 and 2 (see docs/worker-protocol.md).

A frame is a 4-byte big-endian payload length followed by a UTF-8 JSON
object. Nothing here raises on bad input: decoders return either the value
or a `Failure` naming one of `FAILURE_KINDS`, and the connection layer alone
decides what a failure does (for the worker: an `error` frame, then close).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, List, Optional, Union

from .schema import (  # noqa: F401 (re-exported: the protocol's limits)
    MAX_ID_CHARS,
    MAX_TOKEN_ID,
    MIN_MAX_FRAME_BYTES,
    SCHEMAS,
    STATES,
)

SUPPORTED_VERSIONS = (1, 2)

# The sidecar's default. Large enough for any prompt worth sending over a
# local socket, small enough that a corrupt length cannot make us buffer
# gigabytes before noticing.
DEFAULT_MAX_FRAME_BYTES = 1 << 20

TO_WORKER = "to_worker"
TO_SIDECAR = "to_sidecar"

FAILURE_KINDS = (
    "zero_length",
    "oversized",
    "bad_utf8",
    "bad_json",
    "not_object",
    "missing_type",
    "unknown_type",
    "bad_field",
)

_LENGTH = struct.Struct(">I")

pack_length = _LENGTH.pack
"""Encode a payload length as the 4-byte frame header."""

# Compact, and non-ASCII text stays UTF-8: every byte counts per token.
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
"""Serialize a message the way every frame is serialized."""

encode_str = json.encoder.encode_basestring
"""Encode one Python string as a JSON string literal (quotes included)."""

# A chunk travels as an item: its JSON object without `type`. A `chunk`
# frame is the item with CHUNK_HEAD in place of its opening brace; a
# `chunks` frame (version 2) is items between CHUNKS_HEAD and CHUNKS_TAIL.
CHUNK_HEAD = b'{"type":"chunk",'
CHUNKS_HEAD = b'{"type":"chunks","items":['
CHUNKS_TAIL = b"]}"
CHUNKS_OVERHEAD = len(CHUNKS_HEAD) + len(CHUNKS_TAIL)
CHUNK_FRAME_EXTRA = len(CHUNK_HEAD) - 1
"""What a `chunk` frame's payload adds to its item's size."""


def chunk_frame(item: bytes) -> bytes:
    """The whole `chunk` frame (length included) of one item."""
    return b"".join(
        (pack_length(len(item) + CHUNK_FRAME_EXTRA), CHUNK_HEAD, memoryview(item)[1:])
    )


class Failure:
    """Why bytes could not be read as a message: a kind and a detail."""

    __slots__ = ("kind", "detail")

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    def __repr__(self) -> str:
        return f"Failure({self.kind!r}, {self.detail!r})"


Decoded = Union[dict, Failure]


def encode_frame(message: dict) -> bytes:
    """Return `message` as one frame: header and compact UTF-8 JSON."""
    payload = encode_json(message).encode("utf-8")
    return pack_length(len(payload)) + payload


def _check_length(length: int, max_frame_bytes: int) -> Optional[Failure]:
    if length == 0:
        return Failure("zero_length", "frame length is 0")
    if length > max_frame_bytes:
        return Failure(
            "oversized",
            f"frame length {length} exceeds max_frame_bytes {max_frame_bytes}",
        )
    return None


class FrameDecoder:
    """Split a byte stream into frame payloads, incrementally.

    `feed()` returns the payloads completed by the new bytes. A bad length
    ends the list with a `Failure`; the stream has no frame boundary after
    it, so later calls return nothing.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._pending = b""
        self._failed = False

    def feed(self, data: bytes) -> List[Union[bytes, Failure]]:
        """Add `data`; return every payload (or the failure) it completes."""
        if self._failed:
            return []
        buf = self._pending + data if self._pending else data
        size = len(buf)
        pos = 0
        out: List[Union[bytes, Failure]] = []

        while size - pos >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            failure = _check_length(length, self.max_frame_bytes)
            if failure is not None:
                self._failed = True
                self._pending = b""
                out.append(failure)
                return out
            end = pos + 4 + length
            if end > size:
                break
            out.append(buf[pos + 4 : end])
            pos = end

        self._pending = buf[pos:] if pos else buf
        return out


async def read_frame(
    reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Union[bytes, Failure]:
    """Read one frame's payload, or the failure its header shows.

    Raises `asyncio.IncompleteReadError` when the stream ends first. An
    oversized length is reported before any of the payload is read.
    """
    (length,) = _LENGTH.unpack(await reader.readexactly(4))
    failure = _check_length(length, max_frame_bytes)
    if failure is not None:
        return failure
    return await reader.readexactly(length)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), whatever Python accepts.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every frame: `json.loads` with a keyword argument builds a
# new one per call, and `decode` scans for whitespace with two regular
# expression matches; `parse_json` does what `decode` does without them.
_raw_decode = json.JSONDecoder(parse_constant=_reject_constant).raw_decode
_JSON_SPACE = " \t\n\r"


def parse_json(text: str) -> Any:
    """`json.loads(text)`, refusing NaN and Infinity; raises ValueError."""
    start = 0
    if text[:1] in _JSON_SPACE:
        # Also true of "": raw_decode then reports the empty document.
        start = len(text) - len(text.lstrip(_JSON_SPACE))
    value, end = _raw_decode(text, start)
    if end != len(text):
        rest = text[end:].lstrip(_JSON_SPACE)
        if rest:
            raise json.JSONDecodeError("Extra data", text, len(text) - len(rest))
    return value


def decode_message(payload: bytes, direction: str) -> Decoded:
    """Parse a frame payload and validate it as a message in `direction`.

    `direction` is `TO_WORKER` (what a worker receives) or `TO_SIDECAR`.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Failure("bad_utf8", str(exc))
    try:
        message = parse_json(text)
    except (ValueError, RecursionError) as exc:
        return Failure("bad_json", str(exc))
    return validate_message(message, direction)


def check_frame(frame: bytes, direction: str, max_frame_bytes: int) -> Decoded:
    """Decode one complete frame (header included) and validate it."""
    results = FrameDecoder(max_frame_bytes).feed(frame)
    if not results:
        return Failure("bad_field", "frame is shorter than its header announces")
    first = results[0]
    if isinstance(first, Failure):
        return first
    if len(results) > 1 or len(first) + 4 != len(frame):
        return Failure("bad_field", "bytes after the end of the frame")
    return decode_message(first, direction)


def validate_message(message: Any, direction: str) -> Decoded:
    """Check a parsed JSON value against the message types of `direction`."""
    if type(message) is not dict:
        return Failure("not_object", f"payload is a JSON {_json_kind(message)}")
    kind = message.get("type")
    if type(kind) is not str:
        return Failure("missing_type", "member 'type' must be a string")
    check = SCHEMAS[direction].get(kind)
    if check is None:
        return Failure("unknown_type", f"unknown message type {kind!r} ({direction})")
    problem = check(message)
    if problem is not None:
        return Failure("bad_field", f"{kind}: {problem}")
    return message


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
