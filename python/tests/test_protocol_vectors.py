"""The shared vectors (tests/protocol_vectors/frames.json) against the codec.

The sidecar's TypeScript codec runs the same file, so both ends agree on
every frame it describes.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from cy_worker.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FAILURE_KINDS,
    Failure,
    FrameDecoder,
    decode_message,
    pack_length,
    read_frame,
)

VECTORS = os.path.join(os.path.dirname(__file__), "../../tests/protocol_vectors/frames.json")

with open(VECTORS, encoding="utf-8") as f:
    CASES = json.load(f)["cases"]


def frame_of(case):
    payload = (
        bytes.fromhex(case["payload_hex"])
        if "payload_hex" in case
        else case["payload"].encode("utf-8")
    )
    length = case.get("length", len(payload))
    return pack_length(length) + payload


def check(case, result):
    expect = case["expect"]
    if "error" in expect:
        assert isinstance(result, Failure), f"expected {expect['error']}, got {result!r}"
        assert result.kind == expect["error"], str(result)
        assert result.kind in FAILURE_KINDS
    else:
        assert not isinstance(result, Failure), str(result)
        assert result == expect["message"]


def decode_with_frame_decoder(case):
    decoder = FrameDecoder(case.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES))
    results = decoder.feed(frame_of(case))
    assert len(results) == 1, results
    result = results[0]
    return result if isinstance(result, Failure) else decode_message(result, case["direction"])


async def decode_with_read_frame(case):
    reader = asyncio.StreamReader()
    reader.feed_data(frame_of(case))
    reader.feed_eof()
    payload = await read_frame(reader, case.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES))
    return payload if isinstance(payload, Failure) else decode_message(payload, case["direction"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_frame_decoder_gives_the_vector_result(case):
    check(case, decode_with_frame_decoder(case))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_read_frame_gives_the_vector_result(case):
    check(case, asyncio.run(decode_with_read_frame(case)))


def test_vectors_cover_both_directions_and_every_failure_kind():
    assert {c["direction"] for c in CASES} == {"to_worker", "to_sidecar"}
    kinds = {c["expect"]["error"] for c in CASES if "error" in c["expect"]}
    assert kinds == set(FAILURE_KINDS)
