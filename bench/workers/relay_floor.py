"""Barrier figure, the relay floor: clusterlab's barrier with everything but its hops taken out.

    python relay_floor.py NNODES NPROC N WARMUP

The same processes and the same hops as a clusterlab barrier - NNODES "agent"
processes with NPROC workers each; a worker writes one line down a pipe to its
agent and sleeps until the answer; an agent forwards its node's arrivals to agent 0
over TCP once the whole node is in, and agent 0 answers every agent over TCP; each
agent answers its workers down their pipes - in as little Python as that takes: no
JSON, no round table, no names, no timeouts that name anyone, no output pumping.
It is what any launcher built of Python agents, pipes and sleeping waits cannot
beat on this machine; the gap between it and clusterlab is clusterlab's own code.
Rank 0 prints ``BENCH {"n": .., "mean_us": .., "p99_us": ..}`` like barrier_loop.py.
"""
import json
import os
import select
import socket
import sys
import time

from clusterlab.run import split_cpus


def worker(up: int, down: int, n: int, warmup: int, report: bool) -> None:
    poller = select.poll()
    poller.register(down, select.POLLIN)
    times = []
    clock = time.perf_counter
    for k in range(warmup + n):
        t = clock()
        os.write(up, b"arrive\n")
        poller.poll(60_000)
        os.read(down, 64)
        if k >= warmup:
            times.append(clock() - t)
    if report:
        times.sort()
        print("BENCH " + json.dumps({"n": n, "mean_us": sum(times) / n * 1e6,
                                     "p99_us": times[min(n - 1, int(n * 0.99))] * 1e6}), flush=True)


def agent(node: int, nnodes: int, nproc: int, rounds: int, listener: socket.socket, n: int, warmup: int) -> None:
    shares = split_cpus(nnodes, sorted(os.sched_getaffinity(0)))
    if shares:  # each node on its own CPUs, exactly as `clusterlab simulate` places them
        os.sched_setaffinity(0, shares[node])
    ups = [os.pipe() for _ in range(nproc)]
    downs = [os.pipe() for _ in range(nproc)]
    pids = []
    for i in range(nproc):
        pid = os.fork()
        if pid == 0:
            listener.close()
            worker(ups[i][1], downs[i][0], n, warmup, node == 0 and i == 0)
            os._exit(0)
        pids.append(pid)
    readers = {ups[i][0]: i for i in range(nproc)}
    if node == 0:
        peers = [listener.accept()[0] for _ in range(nnodes - 1)]
    else:
        peers = [socket.create_connection(listener.getsockname())]
    listener.close()
    for s in peers:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    poller = select.poll()
    for fd in readers:
        poller.register(fd, select.POLLIN)
    for s in peers:
        poller.register(s.fileno(), select.POLLIN)
    by_fd = {s.fileno(): s for s in peers}
    for _ in range(rounds):
        local, remote, released = 0, 0, False
        while not released:
            for fd, _ in poller.poll(60_000):
                if fd in readers:
                    local += os.read(fd, 64).count(b"\n")
                    if local == nproc and node != 0:
                        peers[0].sendall(b"A")
                else:
                    got = len(by_fd[fd].recv(64))
                    remote += got
                    released = node != 0 and got > 0
            if node == 0 and local == nproc and remote == nnodes - 1:
                for s in peers:
                    s.sendall(b"R")
                released = True
        for _, w in downs:
            os.write(w, b"r")
    for pid in pids:
        os.waitpid(pid, 0)


def main() -> None:
    nnodes, nproc, n, warmup = (int(x) for x in sys.argv[1:5])
    listener = socket.create_server(("127.0.0.1", 0))
    pids = []
    for node in range(nnodes):
        pid = os.fork()
        if pid == 0:
            try:
                agent(node, nnodes, nproc, n + warmup, listener, n, warmup)
            finally:
                os._exit(0)
        pids.append(pid)
    listener.close()
    for pid in pids:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
