"""The worker's announced state, and what follows from it.

    ready      accepts generations (model_id, max_concurrency)
    reloading  loading a model; finishes what it has; eta until ready
    draining   going away for good; finishes what it has

Any state may follow any other: the application decides. The current state
is both broadcast (`status`) and given to every new connection (`welcome`),
so a sidecar that reconnects mid-reload learns the remaining eta.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple


def check_model_id(model_id: Any) -> str:
    """Return `model_id` if usable, else raise ValueError saying why."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
    return model_id


def check_concurrency(max_concurrency: Any) -> int:
    """Return `max_concurrency` if usable, else raise ValueError saying why."""
    if type(max_concurrency) is not int or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
    return max_concurrency


class Status:
    """State, model and limits, as last announced."""

    def __init__(self, model_id: str, max_concurrency: int) -> None:
        self.state = "ready"
        self.model_id = check_model_id(model_id)
        self.max_concurrency = check_concurrency(max_concurrency)
        self.message: Optional[str] = None
        # time.monotonic() when a reload is expected to be over.
        self.eta_deadline: Optional[float] = None

    def to_reloading(self, eta_s: Optional[float], message: Optional[str]) -> Dict[str, Any]:
        """Enter `reloading`; return the `status` frame announcing it."""
        frame: Dict[str, Any] = {"type": "status", "state": "reloading"}
        self.eta_deadline = None
        if eta_s is not None:
            if eta_s < 0:
                raise ValueError(f"eta_s must be >= 0, got {eta_s!r}")
            frame["eta_ms"] = int(round(eta_s * 1000))
            self.eta_deadline = time.monotonic() + eta_s
        return self._enter("reloading", frame, message)

    def to_ready(
        self, model_id: Optional[str], max_concurrency: Optional[int], message: Optional[str]
    ) -> Dict[str, Any]:
        """Enter `ready`, maybe with a new model or limit; return the frame."""
        if model_id is not None:
            self.model_id = check_model_id(model_id)
        if max_concurrency is not None:
            self.max_concurrency = check_concurrency(max_concurrency)
        self.eta_deadline = None
        frame = {
            "type": "status",
            "state": "ready",
            "model_id": self.model_id,
            "max_concurrency": self.max_concurrency,
        }
        return self._enter("ready", frame, message)

    def to_draining(self, message: Optional[str]) -> Dict[str, Any]:
        """Enter `draining`; return the frame."""
        self.eta_deadline = None
        return self._enter("draining", {"type": "status", "state": "draining"}, message)

    def _enter(self, state: str, frame: Dict[str, Any], message: Optional[str]) -> Dict[str, Any]:
        self.state = state
        self.message = message
        if message:
            frame["message"] = message
        return frame

    def welcome(self, version: int, worker_name: str, max_frame_bytes: int) -> Dict[str, Any]:
        """The `welcome` frame for a new connection, with the remaining eta."""
        frame: Dict[str, Any] = {
            "type": "welcome",
            "version": version,
            "worker": worker_name,
            "model_id": self.model_id,
            "max_concurrency": self.max_concurrency,
            "max_frame_bytes": max_frame_bytes,
            "state": self.state,
        }
        if self.state == "reloading" and self.eta_deadline is not None:
            remaining = self.eta_deadline - time.monotonic()
            frame["eta_ms"] = max(0, int(round(remaining * 1000)))
        return frame

    def refusal(self, requested_model: str, in_flight: int) -> Optional[Tuple[str, str]]:
        """Why a new generation cannot start, as (code, message), or None."""
        if self.state != "ready":
            return ("overloaded", f"worker is {self.state}")
        if in_flight >= self.max_concurrency:
            return (
                "overloaded",
                f"{in_flight} generations in flight; max_concurrency is {self.max_concurrency}",
            )
        if requested_model and requested_model != self.model_id:
            return (
                "model_mismatch",
                f"worker serves model {self.model_id!r}, not {requested_model!r}",
            )
        return None
