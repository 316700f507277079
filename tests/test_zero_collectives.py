"""Ring collectives over real sockets, one thread per rank, checked against plain numpy sums."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from clusterlab.layout import ClusterLayout
from clusterlab.zero import collectives as C
from clusterlab.zero.transport import SocketChannel, connect_ring, local_ring, open_listener


def run_ring(layout: ClusterLayout, fn, *, tcp: bool = False):
    """Run ``fn(ring) -> result`` on every rank of ``layout`` in threads; return (results, rings)."""
    p = layout.world_size
    if tcp:
        listeners = [open_listener() for _ in range(p)]
        addresses = [ls.getsockname() for ls in listeners]
    else:
        channels = local_ring(p, timeout=20)
    results: list = [None] * p
    rings: list = [None] * p
    errors: list = []

    def body(r):
        try:
            ch = connect_ring(r, p, listeners[r], addresses, timeout=20) if tcp else channels[r]
            nxt = (r + 1) % p
            ring = C.Ring(r, p, ch, layout.locate(r)[0] == layout.locate(nxt)[0])
            rings[r] = ring
            results[r] = fn(ring)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(r,)) for r in range(p)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for ring in rings:
        if ring is not None:
            ring.channel.close()
    assert not any(t.is_alive() for t in threads), "a rank hung"
    if errors:
        raise errors[0]
    return results, rings


def _inputs(p: int, n: int, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [[rng.standard_normal(n).astype(dtype) for _ in range(p)] for _ in range(p)]  # [rank][chunk]


@pytest.mark.parametrize("nnodes, nproc", [(1, 1), (1, 3), (2, 4), (3, 2)])
def test_reduce_scatter_all_gather_all_reduce(nnodes, nproc):
    layout = ClusterLayout(nnodes, nproc)
    p, n = layout.world_size, 5
    data = _inputs(p, n)
    expected = [np.sum([data[r][c] for r in range(p)], axis=0, dtype=np.float64) for c in range(p)]

    rs, _ = run_ring(layout, lambda ring: C.reduce_scatter(ring, data[ring.rank]))
    for r in range(p):
        np.testing.assert_allclose(rs[r], expected[r], rtol=1e-5)

    ag, _ = run_ring(layout, lambda ring: C.all_gather(ring, data[ring.rank][0]))
    for r in range(p):
        for c in range(p):
            np.testing.assert_array_equal(ag[r][c], data[c][0])

    ar, rings = run_ring(layout, lambda ring: C.all_reduce(ring, data[ring.rank]))
    for r in range(p):
        for c in range(p):
            np.testing.assert_array_equal(ar[r][c], ar[0][c])  # bitwise identical on every rank
            np.testing.assert_allclose(ar[r][c], expected[c], rtol=1e-5)
    # bytes: every rank sends 2 (p-1) chunks of n float32
    for ring in rings:
        assert ring.traffic.total == 2 * (p - 1) * n * 4


def test_traffic_split_follows_the_node_boundary():
    layout = ClusterLayout(2, 4)
    data = _inputs(8, 3)
    _, rings = run_ring(layout, lambda ring: C.all_reduce(ring, data[ring.rank]))
    per_rank = 2 * 7 * 3 * 4
    for r, ring in enumerate(rings):
        last_on_node = r % 4 == 3  # ranks 3 and 7 send to the other node
        assert (ring.traffic.intra, ring.traffic.inter) == ((0, per_rank) if last_on_node else (per_rank, 0))


@pytest.mark.parametrize("root", [0, 2, 5])
def test_broadcast_over_tcp(root):
    layout = ClusterLayout(2, 3)
    payload = np.arange(7, dtype=np.float16)

    def fn(ring):
        mine = payload if ring.rank == root else np.zeros_like(payload)
        return C.broadcast(ring, mine, root)

    got, rings = run_ring(layout, fn, tcp=True)
    for g in got:
        np.testing.assert_array_equal(g, payload)
    assert sum(r.traffic.total for r in rings) == (layout.world_size - 1) * payload.nbytes


def test_large_messages_do_not_deadlock():
    # 4 MB per chunk is far beyond a socket buffer: sends must not block the ring.
    layout = ClusterLayout(1, 3)
    big = [[np.full(1 << 20, r, dtype=np.float32) for _ in range(3)] for r in range(3)]
    out, _ = run_ring(layout, lambda ring: C.reduce_scatter(ring, big[ring.rank]))
    for r in range(3):
        assert float(out[r][0]) == 0 + 1 + 2


def test_size_mismatch_is_reported():
    layout = ClusterLayout(1, 2)

    def fn(ring):
        n = 3 if ring.rank == 0 else 4
        return C.all_gather(ring, np.zeros(n, dtype=np.float32))

    with pytest.raises(RuntimeError, match=r"expected .* bytes"):
        run_ring(layout, fn)


def test_closed_peer_is_a_clear_error():
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    ch = SocketChannel(a, d, timeout=5)
    c.close()
    with pytest.raises(ConnectionError, match="connection closed"):
        ch.recv()
    ch.close()
    b.close()


def test_wrong_chunk_count_is_rejected():
    layout = ClusterLayout(1, 2)
    with pytest.raises(ValueError, match="one chunk per rank"):
        run_ring(layout, lambda ring: C.reduce_scatter(ring, [np.zeros(1)]))
