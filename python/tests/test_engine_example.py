"""The engine example of python/README.md, run as written."""

from __future__ import annotations

import os
import re
import threading

from fake_sidecar import FakeSidecar, ids_of, run, serving, text_of

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def example_engine_class():
    """Exec the README's EchoEngine block; return the class it defines."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (code,) = [b for b in blocks if "class EchoEngine" in b]
    namespace: dict = {}
    exec(compile(code, README, "exec"), namespace)
    return namespace["EchoEngine"]


def test_the_readme_echo_engine_streams_cancels_and_refuses(sock_path):
    EchoEngine = example_engine_class()
    stop = threading.Event()

    async def body():
        holder = {}
        engine = EchoEngine(lambda: holder["worker"], step_s=0.002)
        async with serving(None, sock_path, engine=engine) as worker:
            holder["worker"] = worker
            thread = threading.Thread(target=engine.run_steps, args=(stop,))
            thread.start()
            try:
                sidecar = await FakeSidecar.open(sock_path, versions=[1, 2])
                sidecar.generate("a", prompt="hello big world")
                sidecar.generate("b", prompt="")
                sidecar.generate("c", prompt=" ".join(["word"] * 10_000), credit=2)
                ended = {}
                texts = {"a": [], "c": []}
                while len(ended) < 2:
                    message = await sidecar.recv()
                    for item in message.get("items", [message] if message["type"] == "chunk" else []):
                        texts[item["id"]].append(item)
                    if message["type"] in ("done", "error"):
                        ended[message["id"]] = message
                assert text_of(texts["a"]) == " hello big world"
                assert ids_of(texts["a"]) == [5, 3, 5]
                assert ended["a"]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3}
                assert ended["b"]["code"] == "invalid_argument"
                # "c" is out of credit after two words; cancelling it ends it
                # with exactly what was sent.
                sidecar.send({"type": "cancel", "id": "c", "reason": "client_cancelled"})
                _, done = await sidecar.until_end("c")
                assert done["finish_reason"] == "cancelled"
                assert done["usage"]["completion_tokens"] == len(texts["c"]) == 2
                assert engine.running == {}
                await sidecar.close()
            finally:
                stop.set()
                thread.join()

    run(body())
