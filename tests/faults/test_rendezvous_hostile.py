"""The rendezvous under bad input: a real master agent on 127.0.0.1, hostile clients, then a real node 1.

Every client below talks raw TCP to ``clusterlab launch --node-rank 0 --nnodes 2``
(or 3). Whatever they send, the master must answer with a refusal or a close,
never crash, never make the others wait on them, never allocate from an
unchecked length, and the legitimate node that comes afterwards must still join
and finish the job. Frames are JSON (:mod:`clusterlab.wire`); nothing is ever
unpickled, which the pickle test checks directly.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterlab.protocol import PROTOCOL_VERSION
from clusterlab.wire import MAX_FRAME, FrameDecoder, ProtocolError, encode
from faults.kit import Job

#: a refusal for a frame whose length prefix is over the limit comes back within this (no waiting for a body)
PROMPT = 2.0


def frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def frame_raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def hello(**override) -> dict:
    msg = {"t": "hello", "version": PROTOCOL_VERSION, "run_id": "lab", "node_rank": 1, "nnodes": 2,
           "nproc_per_node": 1, "host": "intruder"}
    msg.update(override)
    return msg


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def answer(sock: socket.socket) -> dict | None:
    """The master's first frame to us, or None if it closed the connection without one."""
    dec = FrameDecoder()
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not data:
            return None
        got = dec.feed(data)
        if got:
            return got[0]


def refused(sock: socket.socket, reason: str) -> None:
    msg = answer(sock)
    assert msg is not None and msg["t"] == "refuse" and reason in msg["reason"], msg
    sock.close()


@pytest.fixture
def master(tmp_path):
    """A real node-0 agent of a 2-node job (run id 'lab'), waiting for its node 1."""
    job = Job("launch", tmp_path, "none", nproc=1, nodes=(0,), extra=("--rdzv-id", "lab"))
    job.wait_for(r"node0 is the master: waiting for 1 more node")
    yield job
    for launcher in job.launchers.values():
        if launcher.proc.poll() is None:
            launcher.proc.kill()
        launcher.wait(10)


def join_node1(job: Job, tmp_path) -> None:
    """The legitimate node 1 joins after the abuse; the job must complete on both nodes."""
    node1 = Job("launch", tmp_path / "n1", "none", nproc=1, nodes=(1,), port=job.port, extra=("--rdzv-id", "lab"))
    codes = node1.finish(60) | job.finish(60)
    assert codes == {0: 0, 1: 0}, job.text + "\n---\n" + node1.text
    assert "Traceback" not in job.text
    assert "] rank 0 done" in job.text and "] rank 1 done" in node1.text


@pytest.fixture
def n1dir(tmp_path):
    (tmp_path / "n1").mkdir()
    return tmp_path


def test_every_kind_of_garbage_then_a_real_node_joins(master, n1dir):
    port = master.port
    # nothing at all, and a half frame then silence: both stay open while the others are served
    silent = connect(port)
    slow = connect(port)
    slow.sendall(frame(hello())[:7])

    cases = [
        (struct.pack(">I", 200) + random.Random(1).randbytes(200), "not a clusterlab agent"),  # random body
        (b"\xff" + random.Random(2).randbytes(500), "exceeds"),                          # random bytes
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a clusterlab agent"),               # a web browser
        (struct.pack(">I", 0xFFFFFFFF), "exceeds"),                                     # 4 GiB length prefix
        (struct.pack(">I", MAX_FRAME + 1), "exceeds"),                                  # one byte over
        (frame({"t": "arrive", "items": []}), "the first frame must be a hello"),
        (frame([1, 2, 3]), "not a clusterlab agent"),                                    # JSON, not an object
        (frame(hello(version=PROTOCOL_VERSION + 1)), "protocol version"),
        (frame(hello(version="1")), "protocol version"),
        (frame(hello(run_id="someone-elses-job")), "does not match this job's 'lab'"),
        (frame(hello(nproc_per_node=8)), "differ from the master's"),
        (frame(hello(node_rank=0)), "is not in 1..1"),
        (frame(hello(node_rank=True)), "is not in 1..1"),
        (frame(hello(node_rank=[1])), "is not in 1..1"),
        (frame_raw(b'{"t":"hello","x":' + b"[" * 9000 + b"]" * 9000 + b"}"), "too deeply"),
        # a 1 MiB frame (under the cap) whose first 64 KiB + 1 byte arrive: a hello is never that big
        (struct.pack(">I", 1 << 20) + b"{" + b" " * 65532, "hello frame too large"),
    ]
    for data, reason in cases:
        sock = connect(port)
        t0 = time.monotonic()
        sock.sendall(data)
        refused(sock, reason)
        assert time.monotonic() - t0 < PROMPT, f"{reason}: answered after {time.monotonic() - t0:.2f}s"

    # a client that disconnects mid-frame, and one that resets the connection
    for cut in (1, 3, 10):
        sock = connect(port)
        sock.sendall(frame(hello())[:cut])
        sock.close()
    rst = connect(port)
    rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rst.sendall(b"\x00\x00")
    rst.close()

    join_node1(master, n1dir)  # the silent and the slow clients did not hold anybody up
    log = master.text
    assert log.count("refused a connection from 127.0.0.1:") >= len(cases)
    silent.close()
    slow.close()


def test_many_connections_at_once(master, n1dir):
    """300 clients connect at the same moment; a third send garbage, a third a wrong hello, a third nothing."""
    rng = random.Random(7)
    socks = [connect(master.port) for _ in range(300)]
    for i, sock in enumerate(socks):
        if i % 3 == 0:
            sock.sendall(rng.randbytes(rng.randint(1, 500)))
        elif i % 3 == 1:
            sock.sendall(frame(hello(run_id=f"job{i}")))
    for i, sock in enumerate(socks):
        if i % 3 != 2:  # refused or closed within the hello timeout, never left hanging (recv has a timeout)
            msg = answer(sock)
            assert msg is None or msg["t"] == "refuse", msg
    join_node1(master, n1dir)
    for sock in socks:
        sock.close()


def test_silent_client_is_dropped_after_the_hello_timeout(master):
    from clusterlab.rendezvous import HELLO_TIMEOUT

    sock = connect(master.port)
    t0 = time.monotonic()
    msg = answer(sock)
    waited = time.monotonic() - t0
    assert msg is not None and msg["t"] == "refuse" and f"no hello within {HELLO_TIMEOUT:g}s" in msg["reason"]
    assert HELLO_TIMEOUT - 0.5 < waited < HELLO_TIMEOUT + 2.0, waited
    sock.close()


def test_a_duplicate_node_rank_is_refused_and_the_job_still_runs(tmp_path):
    """Two agents both started with --node-rank 1 (a typo): the second is refused, the first keeps its place."""
    for d in ("a", "b", "n2"):
        (tmp_path / d).mkdir()
    job = Job("launch", tmp_path, "none", nnodes=3, nproc=1, nodes=(0,), extra=("--rdzv-id", "lab"))
    job.wait_for("waiting for 2 more node")
    twins = [Job("launch", tmp_path / d, "none", nnodes=3, nproc=1, nodes=(1,), port=job.port,
                 extra=("--rdzv-id", "lab")) for d in ("a", "b")]
    job.wait_for("--node-rank 1 has already joined")
    last = Job("launch", tmp_path / "n2", "none", nnodes=3, nproc=1, nodes=(2,), port=job.port, extra=("--rdzv-id", "lab"))
    assert sorted(t.finish()[1] for t in twins) == [0, 1]
    assert last.finish() == {2: 0} and job.finish() == {0: 0}, job.text
    loser = next(t for t in twins if t.launchers[1].proc.returncode == 1)
    assert "refused this agent: --node-rank 1 has already joined (two agents with the same node rank?)" in loser.text


@pytest.mark.parametrize("evil, message", [
    ({"t": "abort", "code": "x"}, "node1 sent a malformed 'abort' message"),
    ({"t": "arrive", "attempt": 0, "items": [[0, 0, "stolen", 1.0, None]]}, "node1 sent a malformed 'arrive' message"),
    ({"t": "failed", "attempt": 0}, "node1 sent a malformed 'failed' message"),
])
def test_a_joined_peer_that_sends_nonsense_fails_the_job_cleanly(master, evil, message):
    """Past the hello (right run id), a peer's bad message stops the job with a message, not a traceback."""
    sock = connect(master.port)
    sock.sendall(frame(hello()))
    assert answer(sock)["t"] == "welcome"
    master.wait_for(r"\] ready$")
    sock.sendall(frame(evil))
    codes = master.finish(30)
    assert codes == {0: 1}, master.text
    assert message in master.text and "Traceback" not in master.text
    sock.close()


def test_master_that_answers_with_a_huge_length_prefix(tmp_path):
    """The client side: node 1 talking to a 'master' that claims a 4 GiB frame refuses it at once."""
    with socket.socket() as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen()
        job = Job("launch", tmp_path, "none", nproc=1, nodes=(1,), port=fake.getsockname()[1])
        conn, _ = fake.accept()
        with conn:
            conn.sendall(struct.pack(">I", 0xFFFFFFFF))
            assert job.finish(30) == {1: 1}, job.text
    assert "the master sent garbage" in job.text and "exceeds" in job.text


# ---------------------------------------------------------------- the codec, fuzzed
def test_nothing_is_unpickled():
    """A pickle is just bytes that are not JSON: a ProtocolError, and the payload never runs."""
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/clusterlab-pwned",))

    body = pickle.dumps(Boom())
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)
    assert not os.path.exists("/tmp/clusterlab-pwned")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(lambda d: {**d, "t": "m"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=6), st.data())
def test_frames_survive_any_chunking(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    dec, out, last = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[last:cut])
        last = cut
    assert out == msgs and dec.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**32 - 1), st.binary(max_size=256))
def test_decoder_on_hostile_prefixes(garbage, length, body):
    """Any length prefix and body: a ProtocolError or a wait for more; never more buffered than was sent."""
    dec = FrameDecoder(max_frame=4096)
    sent = garbage + struct.pack(">I", length) + body
    try:
        out = dec.feed(sent)
    except ProtocolError:
        return
    assert all(isinstance(m, dict) and isinstance(m["t"], str) for m in out)
    assert dec.pending <= len(sent)
    assert len(dec._buf) <= len(sent)  # nothing pre-allocated from the length field


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20000), st.sampled_from(["[", "{\"a\":"]))
def test_decoder_on_deep_nesting(depth, opener):
    closer = "]" if opener == "[" else "}"
    body = ('{"t":"x","v":' + opener * depth + "1" + closer * depth + "}").encode()
    try:
        out = FrameDecoder().feed(struct.pack(">I", len(body)) + body)
    except ProtocolError:
        return
    assert out[0]["t"] == "x"
