"""A real sidecar and simulator for gateway tests written with grpcio.

Session fixtures, started once for the whole directory:

- `pb`: the gRPC modules generated from `proto/` with grpcio-tools into a
  temporary directory (nothing generated is committed);
- `sidecar_addr`: the simulator (`python -m cy_worker.sim`) on a Unix socket
  and the sidecar (`main.ts`, with the Deno permission flags production uses
  for its config, from `tools/sidecar_flags.ts`) in front of it; the value is
  the sidecar's bound gRPC address, read from its start-up log line.

`start_stack()` starts such a pair for a test that needs one of its own
(the stress test watches the sidecar process and its metrics).

The sidecar is found through the `DENO` environment variable (set by
`scripts/test.sh`), else the project's pinned copy in `.tools/`.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

import grpc
import pytest
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_DIR = os.path.join(ROOT, "python")
PROTO_DIR = os.path.join(ROOT, "proto")

# Generous: a cold Deno start on a loaded 2-core machine can take seconds.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

# Each .proto is compiled with its own directory as the include root, so the
# generated modules are top-level (`sidecar_pb2`, `health_pb2`). Compiled
# from `proto/` instead, the health module would live in a package named
# `grpc`, which grpcio's own package shadows. The protobuf package names, and
# so the method paths on the wire, are the same either way.
PROTOS = {
    "sidecar": os.path.join(PROTO_DIR, "cy", "sidecar", "v1"),
    "health": os.path.join(PROTO_DIR, "grpc", "health", "v1"),
}

# Local connections only: an http_proxy in the environment must not apply.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


@pytest.fixture(scope="session")
def pb():
    """The generated modules: `sidecar`, `sidecar_grpc`, `health`, `health_grpc`."""
    out = tempfile.mkdtemp(prefix="cy-gateway-pb-")
    # grpcio-tools' copy of the well-known types (google/protobuf/*.proto).
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for name, directory in PROTOS.items():
        args = [
            "grpc_tools.protoc",
            f"-I{directory}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(directory, f"{name}.proto"),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}.proto")

    sys.path.insert(0, out)
    try:
        modules = types.SimpleNamespace(
            **{name: importlib.import_module(f"{name}_pb2") for name in PROTOS},
            **{f"{name}_grpc": importlib.import_module(f"{name}_pb2_grpc") for name in PROTOS},
        )
    finally:
        sys.path.remove(out)
    yield modules
    shutil.rmtree(out, ignore_errors=True)


class Process:
    """A child process whose stdout and stderr go to a log file."""

    def __init__(self, name: str, args: List[str], log_path: str, **popen) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **popen
            )

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for_line(self, match: Callable[[str], bool], timeout_s: float) -> str:
        """The first log line for which `match` is true; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.log().splitlines():
                if match(line):
                    return line
            if self.proc.poll() is not None:
                self.fail(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.fail(f"printed no expected line within {timeout_s:.0f} s")
            time.sleep(0.05)

    def fail(self, problem: str) -> None:
        raise RuntimeError(f"{self.name} {problem}; its output:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def deno_path() -> str:
    """`$DENO` when set, else the project's pinned Deno."""
    path = os.environ.get("DENO") or os.path.join(ROOT, ".tools", "node_modules", ".bin", "deno")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no Deno at {path}: run scripts/bootstrap.sh or set DENO")
    return path


def sidecar_config(directory: str, socket_path: str, metering: str = "") -> str:
    """A config on loopback and free ports, with the usage queue in `directory`.

    `metering` holds extra lines for the `[metering]` section.
    """
    return f"""\
[server]
bind_addr = "127.0.0.1:0"
worker_uds = "unix://{socket_path}"
shutdown_grace_secs = 2

[metering]
usage_db_path = "{directory}/usage/usage.kv"
{metering}

[health]
reconnect_delay_secs = 0.2
reconnect_max_delay_secs = 1

[observability]
metrics_host = "127.0.0.1"
metrics_port = 0
"""


def production_flags(deno: str, config_path: str) -> List[str]:
    """The Deno permission flags the sidecar runs with for this config."""
    out = subprocess.run(
        [deno, "run", "--allow-read", "tools/sidecar_flags.ts", config_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tools/sidecar_flags.ts failed:\n{out.stderr}")
    return out.stdout.splitlines()


def started_line(line: str) -> Optional[dict]:
    """The sidecar's start-up log record, if `line` is it."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("msg") == "cy-sidecar started":
        return record
    return None


def wait_ready(metrics_addr: str, sidecar: Process) -> None:
    """Polls `/readyz` until the sidecar has its worker connected."""
    port = metrics_addr.rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=5) as res:
                if res.status == 200:
                    return
        except OSError:
            pass  # not ready yet (503) or not answering yet
        if sidecar.proc.poll() is not None:
            sidecar.fail(f"exited with status {sidecar.proc.returncode}")
        time.sleep(0.1)
    sidecar.fail(f"was not ready within {STARTUP_TIMEOUT_S:.0f} s")


class Stack(types.SimpleNamespace):
    """A running simulator and sidecar.

    Attributes: `grpc_addr` (`host:port`), `metrics_url`
    (`http://127.0.0.1:port`), `sidecar` and `sim` (`Process`).
    """


@contextmanager
def start_stack(sim_args: Optional[List[str]] = None, metering: str = "") -> Iterator[Stack]:
    """Starts the simulator and the sidecar in a fresh folder; stops both after.

    `sim_args` replace the simulator's timing flags; `metering` adds lines
    to the sidecar's `[metering]` section.
    """
    # A short path: Unix socket paths are limited to 107 bytes.
    directory = tempfile.mkdtemp(prefix="cyg-", dir="/tmp")
    socket_path = os.path.join(directory, "w.sock")
    config_path = os.path.join(directory, "sidecar.toml")
    with open(config_path, "w") as f:
        f.write(sidecar_config(directory, socket_path, metering))
    os.mkdir(os.path.join(directory, "usage"))
    if sim_args is None:
        sim_args = ["--ttft-ms", "5", "--itl-ms", "2"]

    started: List[Process] = []
    try:
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR, PYTHONUNBUFFERED="1")
        sim = Process(
            "simulator",
            [sys.executable, "-m", "cy_worker.sim", "--socket", socket_path]
            + sim_args
            + ["--drain-timeout-secs", "2"],
            os.path.join(directory, "sim.log"),
            env=env,
        )
        started.append(sim)
        sim.wait_for_line(lambda line: "listening on" in line, STARTUP_TIMEOUT_S)

        deno = deno_path()
        sidecar = Process(
            "sidecar",
            [deno, "run", *production_flags(deno, config_path), "main.ts"]
            + ["--config", config_path],
            os.path.join(directory, "sidecar.log"),
            cwd=ROOT,
        )
        started.append(sidecar)
        line = sidecar.wait_for_line(lambda line: started_line(line) is not None, STARTUP_TIMEOUT_S)
        record = started_line(line)
        wait_ready(record["metrics_addr"], sidecar)

        port = record["metrics_addr"].rsplit(":", 1)[1]
        yield Stack(
            grpc_addr=record["grpc_addr"],
            metrics_url=f"http://127.0.0.1:{port}",
            sidecar=sidecar,
            sim=sim,
        )
    finally:
        # The sidecar first, so that it does not see its worker go away.
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sidecar_addr():
    """`host:port` of a running sidecar whose worker is the simulator."""
    with start_stack() as stack:
        yield stack.grpc_addr


@pytest.fixture
def channel_options():
    """Options for every channel a test opens, `grpc.aio` ones included."""
    return list(CHANNEL_OPTIONS)


@pytest.fixture
def channel(sidecar_addr, channel_options):
    """A plaintext channel to the sidecar, closed after the test."""
    with grpc.insecure_channel(sidecar_addr, options=channel_options) as ch:
        yield ch


@pytest.fixture
def stub(pb, channel):
    """A `cy.sidecar.v1.Sidecar` client."""
    return pb.sidecar_grpc.SidecarStub(channel)
