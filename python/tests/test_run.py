"""`Worker.run()`: a complete worker program, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from fake_sidecar import FakeSidecar, run
from sim_process import PYTHON_DIR

PROGRAM = """
import asyncio, sys
from cy_worker import Worker, Token

async def generate(req):
    for i in range(5):
        await asyncio.sleep(0.02)
        yield Token(" w", [i])

Worker(generate, model_id="prog", socket_path=sys.argv[1]).run()
"""


def test_run_serves_until_sigterm_then_drains_and_exits_0(sock_path):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, sock_path], env=env, stderr=subprocess.DEVNULL
    )
    try:

        async def connect():
            # The program gives no sign that it listens: try until it does.
            deadline = time.monotonic() + 5
            while True:
                try:
                    return await FakeSidecar.open(sock_path)
                except (FileNotFoundError, ConnectionRefusedError):
                    assert proc.poll() is None and time.monotonic() < deadline
                    await asyncio.sleep(0.01)

        async def body():
            sidecar = await connect()
            sidecar.generate("a")
            await sidecar.recv()
            proc.send_signal(signal.SIGTERM)
            before, status = await sidecar.until_type("status")
            assert status == {"type": "status", "state": "draining"}
            after, done = await sidecar.until_end("a")
            assert len(before) + len(after) == 4
            assert done["usage"]["completion_tokens"] == 5
            await sidecar.expect_closed()

        run(body())
        assert proc.wait(5) == 0
        assert not os.path.exists(sock_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
