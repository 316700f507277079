"""The agents' frame codec, including hostile input."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterlab.wire import MAX_FRAME, FrameDecoder, ProtocolError, encode


def test_round_trip_in_arbitrary_chunks():
    messages = [{"t": "hello", "n": i, "s": "x" * i} for i in range(20)]
    data = b"".join(encode(m) for m in messages)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(data), 7):
        out += dec.feed(data[i:i + 7])
    assert out == messages and dec.pending == 0


def test_oversized_length_is_refused_before_allocating():
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.feed(struct.pack(">I", MAX_FRAME + 1))


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[1, 2]", b'{"no_t": 1}', b"not json", b'{"t": 5}'])
def test_garbage_bodies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_truncated_frame_waits_for_more():
    frame = encode({"t": "x"})
    dec = FrameDecoder()
    assert dec.feed(frame[:-1]) == []
    assert dec.feed(frame[-1:]) == [{"t": "x"}]


@given(st.binary(max_size=2048))
def test_decoder_never_crashes_on_random_bytes(data):
    dec = FrameDecoder(max_frame=1024)
    try:
        out = dec.feed(data)
    except ProtocolError:
        return
    assert all(isinstance(m, dict) and isinstance(m["t"], str) for m in out)
    assert dec.pending <= len(data)


def test_line_buffer_keeps_lines_whole_and_bounds_memory():
    from clusterlab.output import LineBuffer

    buf = LineBuffer(max_line=10)
    assert buf.feed(b"ab") == [] and buf.feed(b"c\nde") == [b"abc\n"]
    assert buf.feed(b"x" * 25) == [b"de" + b"x" * 8 + b"\n", b"x" * 10 + b"\n"]  # cut at 10 bytes, never more held
    assert buf.flush() == [b"x" * 7 + b"\n"]


# JSON values as the agents carry them (all_gather_object data, messages): the reference is
# the json module itself, whose C scanner and encoder wire.loads/dumps call directly.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(_json_values)
def test_dumps_and_loads_agree_with_the_json_module(value):
    import json

    from clusterlab.wire import dumps, loads

    assert dumps(value) == json.dumps(value, separators=(",", ":")).encode()
    assert loads(dumps(value)) == json.loads(json.dumps(value))
    assert loads(dumps(value) + b"\n") == json.loads(json.dumps(value))


@pytest.mark.parametrize("text", [b"", b" ", b"nope", b'{"a":1} x', b'{"a":1}{"b":2}', b"\xff", b"[1,", b'{"a":1}\n\n'])
def test_loads_fails_or_succeeds_exactly_as_json_loads(text):
    import json

    from clusterlab.wire import loads

    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            loads(text)
    else:
        assert loads(text) == expected
