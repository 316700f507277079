"""Every message is spelled once (clusterlab.protocol); each fast spelling equals the plain encoding.

The reference is the json module itself (compact separators, as the wire uses them), not the
protocol's own earlier output: a change to one spelling that the other does not follow fails here.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterlab import protocol, wire


def plain(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


names = st.text(max_size=20)
timeouts = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False) | st.just(float("inf"))
seqs = st.integers(min_value=0, max_value=2**40)
data = st.none() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=3)


@given(seqs, names, timeouts, data)
def test_request_line_is_the_json_of_the_request(seq, name, timeout, value):
    line = protocol.request_line(seq, name, timeout, value)
    assert line == plain({"op": "gather", "seq": seq, "name": name, "timeout": timeout, "data": value}) + b"\n"
    assert protocol.parse_request(line) == (seq, name, timeout, value)


@given(seqs, names, timeouts)
def test_a_barriers_request_template_spells_its_request_line(seq, name, timeout):
    template = protocol.request_template(name, timeout)
    if template is not None:
        assert template % seq == protocol.request_line(seq, name, timeout)


@given(st.lists(st.tuples(seqs, st.sampled_from(["epoch", "", "a b", 'q"uote', "é"]), timeouts, data), max_size=30))
def test_the_request_reader_reads_what_parse_request_reads(requests):
    reader = protocol.RequestReader()
    for seq, name, timeout, value in requests * 2:  # twice: the second time from what it remembered
        line = protocol.request_line(seq, name, timeout, value)
        assert reader.parse(line) == protocol.parse_request(line) == (seq, name, timeout, value)


@pytest.mark.parametrize("line", [
    b'{"op":"gather","seq":-1,"name":"a","timeout":1.0,"data":null}\n',
    b'{"op":"gather","seq":x,"name":"a","timeout":1.0,"data":null}\n',
    b'{"op":"gather","seq":1,"name":"a","timeout":0,"data":null}\n',
    b'{"op":"gather","seq":1,"name":"a"}\n', b"[]\n", b"not json\n",
])
def test_a_malformed_request_is_refused_after_a_good_one_of_the_same_name(line):
    reader = protocol.RequestReader()
    reader.parse(protocol.request_line(0, "a", 1.0))
    with pytest.raises(ValueError):
        reader.parse(line)


@given(seqs, st.integers(min_value=1, max_value=600))
def test_a_barriers_reply_and_release_are_spelled_as_the_json_says(seq, world):
    reply = plain({"seq": seq, "data": [None] * world}) + b"\n"
    assert protocol.reply_line(seq, [None] * world) == reply
    assert protocol.released_template(world) % seq == reply
    assert protocol.parse_reply(reply) == (seq, [None] * world, None)
    attempt = seq % 7
    assert protocol.released_frame(attempt, seq, world) == wire.encode(protocol.result(attempt, seq, [None] * world))


@given(seqs, st.lists(data, min_size=1, max_size=8), st.text(max_size=30))
def test_replies_with_data_or_an_error(seq, values, error):
    assert protocol.reply_line(seq, values) == plain({"seq": seq, "data": values}) + b"\n"
    line = protocol.reply_line(seq, error=error)
    assert line == plain({"seq": seq, "error": error}) + b"\n"
    assert protocol.parse_reply(line) == (seq, None, error)


def test_a_node_in_one_barrier_arrives_as_one_block():
    same = [(3, "epoch", 300.0, None)] * 4
    msg = protocol.arrive(0, same, [4, 5, 6, 7])
    assert msg == {"t": "arrive", "attempt": 0, "barrier": [3, "epoch", 300.0], "ranks": [4, 5, 6, 7]}
    assert protocol.parse_arrive(wire.loads(wire.dumps(msg)), range(4, 8)) == ([4, 5, 6, 7], (3, "epoch", 300.0, None))
    mixed = [(3, "epoch", 300.0, None), (3, "epoch", 300.0, {"loss": 0.5})]
    msg = protocol.arrive(1, mixed, [4, 5])
    assert msg["items"] == [[4, 3, "epoch", 300.0, None], [5, 3, "epoch", 300.0, {"loss": 0.5}]]
    assert protocol.parse_arrive(msg, range(4, 8)) == [(4, mixed[0]), (5, mixed[1])]


@pytest.mark.parametrize("msg", [
    {"t": "arrive", "attempt": 0, "barrier": [3, "a", 1.0], "ranks": [3, 4]},  # rank 3 is another node's
    {"t": "arrive", "attempt": 0, "barrier": [3, "a", 1.0], "ranks": [4, 4]},  # twice
    {"t": "arrive", "attempt": 0, "barrier": [3, "a", 1.0], "ranks": []},
    {"t": "arrive", "attempt": 0, "barrier": ["3", "a", 1.0], "ranks": [4]},
    {"t": "arrive", "attempt": 0, "items": [[8, 3, "a", 1.0, None]]},
    {"t": "arrive", "attempt": 0, "items": [[4, 3, 7, 1.0, None]]},
])
def test_arrivals_that_are_not_calls_of_the_node_are_refused(msg):
    with pytest.raises(protocol.MALFORMED):
        protocol.parse_arrive(msg, range(4, 8))


def test_a_result_is_for_everyone_or_for_the_ranks_of_an_error():
    assert protocol.parse_result(protocol.result(0, 5, [None, 1])) == (5, [None, 1], None, None)
    assert protocol.parse_result(protocol.result(0, 5, error="boom", ranks=(1, 2))) == (5, None, "boom", frozenset({1, 2}))
    with pytest.raises(ValueError):
        protocol.parse_result({"t": "result", "seq": "5", "data": []})
