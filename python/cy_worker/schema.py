"""What each message of protocol versions 1 and 2 must contain, per direction.

`SCHEMAS[direction][type](message)` returns None when the message is
well-formed, or a short description of the first bad member. Members not
listed here are ignored, so that later versions can add compatible ones.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

# The smallest limit a peer may announce: every fixed-shape frame fits.
MIN_MAX_FRAME_BYTES = 1024

MAX_TOKEN_ID = 0xFFFFFFFF
# Counts, ETAs and limits reach uint32 fields of the sidecar's gateway API:
# a larger value is refused here as it is by the sidecar.
MAX_UINT32 = 0xFFFFFFFF
MAX_ID_CHARS = 128
STATES = ("ready", "reloading", "draining")

Check = Callable[[dict], Optional[str]]
Members = Dict[str, Tuple[bool, Callable[[Any], bool], str]]


def _is_int(value: Any) -> bool:
    # JSON has one number type: to a JavaScript peer 1.0 is the integer 1,
    # so it is to us too. Booleans are not numbers.
    if type(value) is int:
        return True
    return type(value) is float and value.is_integer()


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _uint32_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and low <= v <= MAX_UINT32


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_nonempty_str(value: Any) -> bool:
    return type(value) is str and value != ""


def _is_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_CHARS


def _is_str_list(value: Any) -> bool:
    return type(value) is list and all(type(s) is str for s in value)


def _is_token_ids(value: Any) -> bool:
    if type(value) is not list:
        return False
    return all(_is_int(t) and 0 <= t <= MAX_TOKEN_ID for t in value)


def _is_chat(value: Any) -> bool:
    if type(value) is not list:
        return False
    return all(
        type(m) is dict and type(m.get("role")) is str and type(m.get("content")) is str
        for m in value
    )


def _is_versions(value: Any) -> bool:
    if type(value) is not list or not value:
        return False
    return all(_is_int(v) and v >= 1 for v in value)


_ID = (True, _is_id, "a string of 1..128 characters")
_OPTIONAL_ID = (False, _is_id, "a string of 1..128 characters")
_STATE = (True, lambda v: v in STATES, "one of ready, reloading, draining")
_OPTIONAL_ETA = (False, _uint32_at_least(0), "an integer in 0..2^32-1")
_COUNT = (True, _uint32_at_least(0), "an integer in 0..2^32-1")
_CONCURRENCY = (True, _uint32_at_least(1), "an integer in 1..2^32-1")
_SEQ = (True, _int_at_least(0), "an integer >= 0")


def _check_members(message: dict, members: Members, prefix: str = "") -> Optional[str]:
    for name, (required, valid, expected) in members.items():
        if name not in message:
            if required:
                return f"missing member '{prefix}{name}' ({expected})"
            continue
        if not valid(message[name]):
            return f"member '{prefix}{name}' must be {expected}"
    return None


def _members(members: Members, *extra: Check) -> Check:
    def check(message: dict) -> Optional[str]:
        problem = _check_members(message, members)
        for more in extra:
            if problem is not None:
                break
            problem = more(message)
        return problem

    return check


_SAMPLING: Members = {
    "max_tokens": _COUNT,
    "temperature": (False, _is_number, "a number"),
    "top_p": (False, _is_number, "a number"),
    "stop": (False, _is_str_list, "an array of strings"),
    "seed": (False, _is_int, "an integer"),
}


def _check_generate(message: dict) -> Optional[str]:
    if ("prompt" in message) == ("messages" in message):
        return "exactly one of 'prompt' and 'messages' must be present"
    return _check_members(message["sampling"], _SAMPLING, "sampling.")


def _check_chunk(message: dict) -> Optional[str]:
    if message["text"] == "" and not message["token_ids"]:
        return "a chunk must carry text or token ids"
    return None


_CHUNK_MEMBERS: Members = {
    "id": _ID,
    "text": (True, _is_str, "a string"),
    "token_ids": (True, _is_token_ids, "an array of integers in 0..2^32-1"),
    "prompt_tokens": (False, _uint32_at_least(0), "an integer in 0..2^32-1"),
}


_CHUNK = _members(_CHUNK_MEMBERS, _check_chunk)

_CREDIT = _members({"id": _ID, "chunks": (True, _int_at_least(1), "an integer >= 1")})


def _check_items_of(item_check: Check) -> Check:
    """Each of a batch frame's `items`, checked as the single frame it stands for."""

    def check(message: dict) -> Optional[str]:
        for i, item in enumerate(message["items"]):
            if type(item) is not dict:
                return f"member 'items[{i}]' must be an object"
            problem = item_check(item)
            if problem is not None:
                return f"items[{i}]: {problem}"
        return None

    return check


_NON_EMPTY_ARRAY = (True, lambda v: type(v) is list and len(v) > 0, "a non-empty array")

_USAGE: Members = {"prompt_tokens": _COUNT, "completion_tokens": _COUNT}


def _check_usage(message: dict) -> Optional[str]:
    return _check_members(message["usage"], _USAGE, "usage.")


_IS_OBJECT = (True, lambda v: type(v) is dict, "an object")
_FRAME_LIMIT = (True, _int_at_least(MIN_MAX_FRAME_BYTES), "an integer >= 1024")

SCHEMAS: Dict[str, Dict[str, Check]] = {
    "to_worker": {
        "hello": _members(
            {
                "versions": (True, _is_versions, "a non-empty array of integers >= 1"),
                "max_frame_bytes": _FRAME_LIMIT,
                "sidecar": (False, _is_str, "a string"),
                "heartbeat_interval_ms": (False, _int_at_least(0), "an integer >= 0"),
            }
        ),
        "generate": _members(
            {
                "id": _ID,
                "session_id": (True, _is_str, "a string"),
                "model_id": (True, _is_str, "a string"),
                "prompt": (False, _is_str, "a string"),
                "messages": (False, _is_chat, "an array of {role, content} strings"),
                "sampling": _IS_OBJECT,
                "credit": (True, _int_at_least(1), "an integer >= 1"),
            },
            _check_generate,
        ),
        "cancel": _members({"id": _ID, "reason": (False, _is_str, "a string")}),
        "credit": _CREDIT,
        # Protocol version 2: credit for several generations in one frame.
        "credits": _members({"items": _NON_EMPTY_ARRAY}, _check_items_of(_CREDIT)),
        "ping": _members({"seq": _SEQ}),
        # Sent by a sidecar that found a protocol error, just before it closes.
        "error": _members(
            {
                "id": _OPTIONAL_ID,
                "code": (True, _is_str, "a string"),
                "message": (True, _is_str, "a string"),
            }
        ),
    },
    "to_sidecar": {
        "welcome": _members(
            {
                "version": (True, _int_at_least(1), "an integer >= 1"),
                "worker": (True, _is_str, "a string"),
                "model_id": (True, _is_nonempty_str, "a non-empty string"),
                "max_concurrency": _CONCURRENCY,
                "max_frame_bytes": _FRAME_LIMIT,
                "state": _STATE,
                "eta_ms": _OPTIONAL_ETA,
            }
        ),
        "chunk": _CHUNK,
        # Protocol version 2: several chunks in one frame.
        "chunks": _members({"items": _NON_EMPTY_ARRAY}, _check_items_of(_CHUNK)),
        "done": _members(
            {
                "id": _ID,
                "finish_reason": (True, _is_nonempty_str, "a non-empty string"),
                "usage": _IS_OBJECT,
            },
            _check_usage,
        ),
        "error": _members(
            {
                "id": _OPTIONAL_ID,
                "code": (True, _is_nonempty_str, "a non-empty string"),
                "message": (True, _is_str, "a string"),
            }
        ),
        "status": _members(
            {
                "state": _STATE,
                "eta_ms": _OPTIONAL_ETA,
                "message": (False, _is_str, "a string"),
                "model_id": (False, _is_nonempty_str, "a non-empty string"),
                "max_concurrency": (False, _uint32_at_least(1), "an integer in 1..2^32-1"),
            }
        ),
        "pong": _members({"seq": _SEQ}),
    },
}
