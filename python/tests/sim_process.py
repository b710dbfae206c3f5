"""Run `python -m cy_worker.sim` as a real subprocess for a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import List

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_LINE = "cy_worker.sim listening on"

# Fast defaults, so that a test's generations take milliseconds.
FAST = ["--ttft-ms", "0", "--itl-ms", "1", "--tokens", "8", "--self-check"]


class SimProcess:
    """A simulator process listening on `<directory>/sim.sock`."""

    def __init__(self, directory: str, args: List[str], startup_timeout_s: float = 5.0) -> None:
        self.socket_path = os.path.join(directory, "sim.sock")
        self.log_path = os.path.join(directory, "sim.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cy_worker.sim", "--socket", self.socket_path, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self._wait_until_listening(startup_timeout_s)

    def _wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if READY_LINE in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise AssertionError(f"simulator did not start:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 5.0) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """End the process (by its pid) if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
