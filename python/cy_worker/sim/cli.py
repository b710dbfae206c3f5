"""Command line of `python -m cy_worker.sim`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import List, Optional, Tuple

from ..protocol import DEFAULT_MAX_FRAME_BYTES, SUPPORTED_VERSIONS
from ..worker import DEFAULT_SOCKET_PATH
from .app import Simulator
from .directive import CODE_PATTERN, FAULT_KINDS, SCHEDULES
from .engine import UNSUPPORTED_FAULTS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Read the simulator's options (see `--help`)."""
    parser = argparse.ArgumentParser(
        prog="python -m cy_worker.sim",
        description="Serve a simulated LLM to cy-sidecar over the worker protocol. "
        "A prompt may carry a directive such as [[sim tokens=5 fault=exit after=3]] "
        "(see python/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--socket", default=DEFAULT_SOCKET_PATH, help="Unix socket path to listen on")
    add("--model-id", default="sim-1", help="model id announced to the sidecar")
    add("--max-concurrency", type=int, default=64, help="generations per connection")
    add(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help="largest frame payload accepted",
    )
    add("--ttft-ms", type=float, default=50.0, help="time to first token")
    add("--itl-ms", type=float, default=20.0, help="time between tokens")
    add(
        "--schedule",
        choices=SCHEDULES,
        default="own",
        help="own: each generation keeps its own clock; batched: tokens on a shared decode-step grid",
    )
    add(
        "--api",
        choices=("generator", "engine"),
        default="generator",
        help="generator: an async generator per generation; engine: one decode step for every "
        "running generation (Worker(engine=...)), always on the shared step grid",
    )
    add(
        "--tokens",
        type=int,
        default=32,
        help="output length; a request's sampling.max_tokens caps it",
    )
    add(
        "--stamp",
        action="store_true",
        help="make each chunk's text str(time.monotonic_ns()) + ' ' (for latency benchmarks)",
    )
    add(
        "--fault",
        default="none",
        choices=("none",) + FAULT_KINDS,
        help="fault injected into every generation",
    )
    add("--fault-after-tokens", type=int, default=0, help="tokens sent before the fault fires")
    add("--fault-code", default="internal", help="error code of --fault error")
    add("--reload-eta-secs", type=float, default=5.0, help="eta announced on SIGUSR1")
    add(
        "--reload-secs",
        type=float,
        default=None,
        help="in-process reload duration; None means the eta",
    )
    add(
        "--reload-mode",
        choices=("inprocess", "exit"),
        default="inprocess",
        help="on SIGUSR1, reload in place or exit 0 for a supervisor to restart",
    )
    add(
        "--drain-timeout-secs",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight generations may take",
    )
    add(
        "--self-check",
        action="store_true",
        help="validate every frame sent and log violations (slower)",
    )
    add(
        "--protocol-versions",
        type=_versions,
        default=",".join(str(v) for v in SUPPORTED_VERSIONS),
        help="protocol versions accepted, comma-separated (1 alone: one chunk frame per chunk)",
    )
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    options = parser.parse_args(argv)

    for name in ("max_concurrency", "tokens", "fault_after_tokens"):
        if getattr(options, name) < (1 if name == "max_concurrency" else 0):
            parser.error(f"--{name.replace('_', '-')} is out of range: {getattr(options, name)}")
    if not CODE_PATTERN.match(options.fault_code):
        parser.error(f"--fault-code must be a lower-case error code, got {options.fault_code!r}")
    if options.api == "engine" and options.fault in UNSUPPORTED_FAULTS:
        parser.error(f"--fault {options.fault} needs --api generator")
    for name in ("ttft_ms", "itl_ms", "reload_eta_secs", "drain_timeout_secs"):
        if getattr(options, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return options


def _versions(text: str) -> Tuple[int, ...]:
    try:
        versions = tuple(int(part) for part in text.split(","))
    except ValueError:
        versions = ()
    if not versions or any(v not in SUPPORTED_VERSIONS for v in versions):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {list(SUPPORTED_VERSIONS)}, got {text!r}"
        )
    return versions


def main(argv: Optional[List[str]] = None) -> int:
    """Run the simulator; return the process exit status."""
    options = parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        simulator = Simulator(options)
    except ValueError as exc:
        print(f"cy_worker.sim: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(simulator.run())
    except OSError as exc:
        print(f"cy_worker.sim: {exc}", file=sys.stderr)
        return 1
