"""What a generator receives (`Request`) and what it yields (`Token`)."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, NamedTuple, Optional, Sequence


class WorkerError(Exception):
    """A failure to report to the sidecar with a protocol error code.

    Raise it from a generator to end the generation with an `error` frame
    carrying `code` (for example `invalid_argument`, `unavailable`); the
    gateway's caller sees `message` unchanged. Any other exception becomes
    code `internal`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Token(NamedTuple):
    """One chunk of output: its decoded text and the token ids it carries.

    A generator may yield a plain `(text, token_ids)` tuple instead. Either
    part may be empty, not both (such an item is skipped).
    """

    text: str
    token_ids: Sequence[int] = ()


class Sampling:
    """Sampling parameters of a generation; `max_tokens` 0 means "you choose"."""

    __slots__ = ("max_tokens", "temperature", "top_p", "stop", "seed")

    def __init__(
        self,
        max_tokens: int = 0,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        stop: Optional[List[str]] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.stop = stop if stop is not None else []
        self.seed = seed

    @classmethod
    def from_message(cls, sampling: Dict[str, Any]) -> "Sampling":
        """Build from a validated `generate.sampling` object."""
        seed = sampling.get("seed")
        return cls(
            max_tokens=int(sampling["max_tokens"]),
            temperature=sampling.get("temperature"),
            top_p=sampling.get("top_p"),
            stop=list(sampling.get("stop", ())),
            seed=int(seed) if seed is not None else None,
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Sampling({fields})"


class Request:
    """One generation, as the sidecar asked for it.

    Read `prompt` (plain text) or `messages` (chat: a list of
    `{"role", "content"}` dicts); exactly one is set. Before finishing, a
    generator may set `prompt_tokens` (billed as reported, default 0) and
    `finish_reason` (default `"stop"`). `cancelled` turns true when the
    sidecar cancels the generation or its connection closes; the generator
    also sees `asyncio.CancelledError` at its current `await`, or
    `GeneratorExit` at its current `yield`.
    """

    __slots__ = (
        "id",
        "session_id",
        "model_id",
        "prompt",
        "messages",
        "sampling",
        "raw",
        "prompt_tokens",
        "finish_reason",
        "cancelled",
        "cancel_reason",
        "_cancel_event",
        "_generation",
    )

    def __init__(
        self,
        id: str,
        *,
        session_id: str = "",
        model_id: str = "",
        prompt: Optional[str] = None,
        messages: Optional[List[Dict[str, str]]] = None,
        sampling: Optional[Sampling] = None,
        raw: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.id = id
        self.session_id = session_id
        self.model_id = model_id
        self.prompt = prompt
        self.messages = messages
        self.sampling = sampling if sampling is not None else Sampling()
        # The whole `generate` message, for members a later version adds.
        self.raw = raw if raw is not None else {}
        self.prompt_tokens = 0
        self.finish_reason = "stop"
        self.cancelled = False
        self.cancel_reason: Optional[str] = None
        self._cancel_event: Optional[asyncio.Event] = None
        # The package's driver of this generation (used by the simulator's
        # fault injection, which must reach below the public API).
        self._generation: Any = None

    @classmethod
    def from_message(cls, message: Dict[str, Any]) -> "Request":
        """Build from a validated `generate` message."""
        return cls(
            message["id"],
            session_id=message["session_id"],
            model_id=message["model_id"],
            prompt=message.get("prompt"),
            messages=message.get("messages"),
            sampling=Sampling.from_message(message["sampling"]),
            raw=message,
        )

    @property
    def cancel_event(self) -> asyncio.Event:
        """An event set when the generation is cancelled (made on first use)."""
        if self._cancel_event is None:
            self._cancel_event = asyncio.Event()
            if self.cancelled:
                self._cancel_event.set()
        return self._cancel_event

    def _mark_cancelled(self, reason: str) -> None:
        self.cancelled = True
        self.cancel_reason = reason
        if self._cancel_event is not None:
            self._cancel_event.set()

    def __repr__(self) -> str:
        return (
            f"Request(id={self.id!r}, session_id={self.session_id!r}, model_id={self.model_id!r})"
        )
