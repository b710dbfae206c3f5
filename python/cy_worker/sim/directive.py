"""Per-request knobs: the command-line defaults, overridden by a directive.

The grammar is documented in the package docstring (cy_worker/sim).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Optional, Tuple

FAULT_KINDS = (
    "exit",
    "hang",
    "error",
    "malformed",
    "oversized",
    "no_credit",
    "lie_usage",
    "unknown_id",
    "slow_cancel",
)

_DIRECTIVE = re.compile(r"\[\[sim(\s[^\[\]]*)?\]\]")
CODE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError
    return number


def _millis(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError
    return number


def _fault(value: str) -> Optional[str]:
    if value == "none":
        return None
    if value not in FAULT_KINDS:
        raise ValueError
    return value


SCHEDULES = ("own", "batched")


def _schedule(value: str) -> str:
    if value not in SCHEDULES:
        raise ValueError
    return value


def _code(value: str) -> str:
    if not CODE_PATTERN.match(value):
        raise ValueError
    return value


# key -> (attribute, parser, what a good value looks like)
_KEYS: Dict[str, Tuple[str, Callable[[str], Any], str]] = {
    "tokens": ("tokens", _count, "an integer >= 0"),
    "ttft_ms": ("ttft_ms", _millis, "a number >= 0"),
    "itl_ms": ("itl_ms", _millis, "a number >= 0"),
    "fault": ("fault", _fault, "none or one of " + ", ".join(FAULT_KINDS)),
    "after": ("after", _count, "an integer >= 0"),
    "code": ("code", _code, "a lower-case error code such as internal"),
    "schedule": ("schedule", _schedule, "own or batched"),
}


class Plan:
    """How the simulator answers one request."""

    __slots__ = ("tokens", "ttft_ms", "itl_ms", "fault", "after", "code", "schedule")

    def __init__(
        self,
        tokens: int = 32,
        ttft_ms: float = 50.0,
        itl_ms: float = 20.0,
        fault: Optional[str] = None,
        after: int = 0,
        code: str = "internal",
        schedule: str = "own",
    ) -> None:
        self.tokens = tokens
        self.ttft_ms = ttft_ms
        self.itl_ms = itl_ms
        self.fault = fault
        self.after = after
        self.code = code
        self.schedule = schedule

    def copy(self) -> "Plan":
        return Plan(*(getattr(self, name) for name in self.__slots__))

    def for_prompt(self, text: str) -> Tuple["Plan", str]:
        """This plan with the prompt's directive applied, and the prompt without it.

        Raises ValueError describing a malformed directive.
        """
        match = _DIRECTIVE.search(text)
        if match is None:
            return self, text
        plan = self.copy()
        for pair in (match.group(1) or "").split():
            key, sep, value = pair.partition("=")
            if not sep or key not in _KEYS:
                raise ValueError(f"unknown directive item {pair!r}; keys are {', '.join(_KEYS)}")
            attribute, parse, expected = _KEYS[key]
            try:
                setattr(plan, attribute, parse(value))
            except ValueError:
                raise ValueError(f"{key} must be {expected}, got {value!r}") from None
        return plan, _DIRECTIVE.sub(" ", text)

    def clock(self, now: float) -> Tuple[float, float]:
        """When the first token is due and the time between tokens, in seconds.

        `now` is the event loop's clock when the request arrived. With the
        `own` schedule each generation keeps its own clock from its arrival.
        With `batched`, tokens fall on one grid shared by every generation
        with the same `itl_ms`, the way a continuously batching engine emits
        one token for every running sequence per decode step: the first
        token waits for the first step boundary after `ttft_ms`.
        """
        first = now + self.ttft_ms / 1000
        interval = self.itl_ms / 1000
        if self.schedule == "batched" and interval > 0:
            first = math.ceil(first / interval) * interval
        return first, interval

    def length(self, max_tokens: int) -> Tuple[int, str]:
        """Output length and finish reason, given the request's max_tokens."""
        if 0 < max_tokens < self.tokens:
            return max_tokens, "length"
        return self.tokens, "stop"
