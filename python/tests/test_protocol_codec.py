"""Codec behaviour beyond the shared vectors: streaming, encoding, edges."""

from __future__ import annotations

import json

from cy_worker.protocol import (
    TO_SIDECAR,
    TO_WORKER,
    Failure,
    FrameDecoder,
    check_frame,
    decode_message,
    encode_frame,
    pack_length,
    parse_json,
)

PING = {"type": "ping", "seq": 7}
CREDIT = {"type": "credit", "id": "a", "chunks": 2}


def test_encode_frame_is_compact_utf8_with_a_big_endian_length():
    frame = encode_frame({"type": "chunk", "id": "a", "text": "é世", "token_ids": [1]})
    payload = '{"type":"chunk","id":"a","text":"é世","token_ids":[1]}'.encode()
    assert frame == len(payload).to_bytes(4, "big") + payload


def test_decoder_reassembles_frames_split_at_every_byte():
    stream = encode_frame(PING) + encode_frame(CREDIT)
    decoder = FrameDecoder()
    payloads = []
    for i in range(len(stream)):
        payloads += decoder.feed(stream[i : i + 1])
    assert [json.loads(p) for p in payloads] == [PING, CREDIT]


def test_decoder_returns_every_frame_of_one_read():
    stream = encode_frame(PING) * 3 + encode_frame(CREDIT)[:5]
    decoder = FrameDecoder()
    assert len(decoder.feed(stream)) == 3
    assert [json.loads(p) for p in decoder.feed(encode_frame(CREDIT)[5:])] == [CREDIT]


def test_decoder_rejects_an_oversized_header_before_its_body_arrives():
    decoder = FrameDecoder(1024)
    results = decoder.feed(pack_length(1025))
    assert len(results) == 1 and results[0].kind == "oversized"
    # The stream has no frame boundary after a bad length.
    assert decoder.feed(encode_frame(PING)) == []


def test_frames_before_a_bad_length_are_still_delivered():
    results = FrameDecoder().feed(encode_frame(PING) + pack_length(0))
    assert json.loads(results[0]) == PING
    assert isinstance(results[1], Failure) and results[1].kind == "zero_length"


def test_nan_and_infinity_are_not_json():
    for text in ('{"type":"ping","seq":NaN}', '{"type":"ping","seq":Infinity}'):
        result = decode_message(text.encode(), TO_WORKER)
        assert isinstance(result, Failure) and result.kind == "bad_json"


def test_deep_nesting_is_bad_json_not_a_crash():
    result = decode_message(b"[" * 100_000, TO_WORKER)
    assert isinstance(result, Failure) and result.kind == "bad_json"


# What `json.loads` accepts and refuses, NaN and Infinity aside. Only the
# wording of the error may differ (for a byte order mark).
JSON_TEXTS = [
    '{"a":1}',
    ' \t{"a":[1,2]}\r\n',
    '"x"',
    "0",
    "",
    "   ",
    '{"a":1} x',
    '{"a":1}{}',
    "1 2",
    '{"a":1}\u00a0',
    '\ufeff{"a":1}',
    '{"a":',
]


def test_parse_json_accepts_and_refuses_what_json_loads_does():
    for text in JSON_TEXTS:
        try:
            expected = ("value", json.loads(text))
        except json.JSONDecodeError as exc:
            expected = ("error", exc.pos)
        try:
            got = ("value", parse_json(text))
        except json.JSONDecodeError as exc:
            got = ("error", exc.pos)
        assert got == expected, text


def test_parse_json_refuses_nan_and_infinity_that_json_loads_accepts():
    for text in ("NaN", " Infinity", '{"a":-Infinity}'):
        try:
            parse_json(text)
        except ValueError as exc:
            assert "not valid JSON" in str(exc)
        else:
            raise AssertionError(f"{text!r} was accepted")


def test_booleans_are_not_integers_but_integral_floats_are():
    bad = decode_message(b'{"type":"ping","seq":true}', TO_WORKER)
    assert isinstance(bad, Failure) and bad.kind == "bad_field"
    assert decode_message(b'{"type":"ping","seq":3.0}', TO_WORKER) == {"type": "ping", "seq": 3.0}


def test_a_sidecar_may_send_a_connection_error_to_the_worker():
    message = {"type": "error", "code": "protocol", "message": "bad chunk"}
    assert decode_message(json.dumps(message).encode(), TO_WORKER) == message


def test_hello_must_offer_versions_and_a_frame_limit():
    for hello in (
        {"type": "hello", "versions": [], "max_frame_bytes": 4096},
        {"type": "hello", "versions": [1]},
        {"type": "hello", "versions": [1], "max_frame_bytes": 100},
    ):
        result = decode_message(json.dumps(hello).encode(), TO_WORKER)
        assert isinstance(result, Failure) and result.kind == "bad_field", hello


def test_generate_sampling_members_are_checked():
    generate = {
        "type": "generate",
        "id": "a",
        "session_id": "s",
        "model_id": "",
        "prompt": "p",
        "sampling": {"max_tokens": 1, "temperature": "hot"},
        "credit": 1,
    }
    result = decode_message(json.dumps(generate).encode(), TO_WORKER)
    assert isinstance(result, Failure) and "sampling.temperature" in result.detail


def test_ids_longer_than_128_characters_are_rejected():
    result = decode_message(json.dumps({**CREDIT, "id": "x" * 129}).encode(), TO_WORKER)
    assert isinstance(result, Failure) and result.kind == "bad_field"


def test_check_frame_rejects_trailing_bytes_and_short_frames():
    frame = encode_frame({"type": "pong", "seq": 1})
    assert check_frame(frame, TO_SIDECAR, 1024) == {"type": "pong", "seq": 1}
    assert isinstance(check_frame(frame + b"x", TO_SIDECAR, 1024), Failure)
    assert isinstance(check_frame(frame[:-1], TO_SIDECAR, 1024), Failure)
