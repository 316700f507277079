"""Barrier figure: every rank runs WARMUP + N barriers; rank 0 times each one and prints
``BENCH {"n": .., "mean_us": .., "p99_us": ..}``.

    clusterlab simulate --nnodes 2 --nproc-per-node 4 barrier_loop.py clusterlab N WARMUP
    clusterlab simulate --nnodes 2 --nproc-per-node 4 barrier_loop.py gloo N WARMUP
    mpirun -np 8 python barrier_loop.py mpi N WARMUP
    python barrier_loop.py mp N WARMUP WORLD      # multiprocessing.Barrier, WORLD forked processes
"""
import json
import os
import sys
import time


def loop(barrier, rank: int, n: int, warmup: int, report) -> None:
    for _ in range(warmup):
        barrier()
    times = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        barrier()
        times.append(clock() - t)
    if rank == 0:
        times.sort()
        report({"n": n, "mean_us": sum(times) / n * 1e6, "p99_us": times[min(n - 1, int(n * 0.99))] * 1e6})


def emit(stats: dict) -> None:
    print("BENCH " + json.dumps(stats), flush=True)


def main() -> None:
    kind, n, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if kind == "clusterlab":
        import clusterlab

        loop(clusterlab.barrier, int(os.environ["RANK"]), n, warmup, emit)
    elif kind == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        loop(dist.barrier, dist.get_rank(), n, warmup, emit)
        dist.destroy_process_group()
    elif kind == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        loop(comm.Barrier, comm.Get_rank(), n, warmup, emit)
    elif kind == "mp":
        import multiprocessing as mp

        world = int(sys.argv[4])
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(world)
        procs = [ctx.Process(target=loop, args=(barrier.wait, r, n, warmup, emit)) for r in range(1, world)]
        for p in procs:
            p.start()
        loop(barrier.wait, 0, n, warmup, emit)
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    else:
        sys.exit(f"unknown barrier kind {kind!r}: use clusterlab, gloo, mpi or mp")


if __name__ == "__main__":
    main()
