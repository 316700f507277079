"""A worker for fault injection: every rank prints numbered lines, then the chosen fault happens.

    worker.py FAULT FAULT_RANK LINES BARRIER_TIMEOUT TRUTH_DIR

Each rank writes ``LINES`` numbered lines to stdout, one to stderr, then ``ready``,
flushed one by one. After each stdout line is out, the rank appends it to its own
file in TRUTH_DIR too: the reference the test holds the launcher's log files
against ("every line the rank wrote before the fault is in its log"). Then:

- ``none``: every rank meets at barrier "end" and exits 0;
- ``exit``: FAULT_RANK exits with status 3 (others wait at barrier "end");
- ``sigkill``: FAULT_RANK kills itself with SIGKILL (others wait at barrier "end");
- ``hang-in-barrier``: FAULT_RANK waits at barrier "extra" that nobody else calls;
  the others exit 0;
- ``hang-outside``: FAULT_RANK sleeps forever, ignoring SIGTERM; the others wait at
  barrier "end" with BARRIER_TIMEOUT;
- ``wait``: FAULT_RANK sleeps, the others wait at barrier "end" (a fault from
  outside comes next);
- ``idle``: every rank sleeps, in no barrier at all (a fault from outside comes next);
- ``flaky``: FAULT_RANK exits 1 on attempt 0, everyone succeeds on later attempts;
- ``always-fail``: FAULT_RANK exits 1 on every attempt.
"""

import os
import signal
import sys
import time

import clusterlab

fault, fault_rank = sys.argv[1], int(sys.argv[2])
lines, timeout, truth_dir = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rank = int(os.environ["RANK"])
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
truth = os.open(os.path.join(truth_dir, f"rank{rank}.attempt{attempt}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def say(text: str) -> None:
    print(text, flush=True)
    os.write(truth, text.encode() + b"\n")


for i in range(lines):
    say(f"rank {rank} attempt {attempt} line {i}")
print(f"rank {rank} attempt {attempt} err", file=sys.stderr, flush=True)
say("ready")

me = rank == fault_rank
if me and fault != "wait":
    # the test creates TRUTH_DIR/go once it has seen every rank ready (and noted the job's processes)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(truth_dir, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)
if (me and fault in ("exit", "sigkill", "always-fail")) or (me and fault == "flaky" and attempt == 0):
    print(f"FAULT {time.time():.6f}", file=sys.stderr, flush=True)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(1 if fault in ("flaky", "always-fail") else 3)
if fault == "hang-in-barrier":
    if me:
        print(f"FAULT {time.time():.6f}", file=sys.stderr, flush=True)
        clusterlab.barrier("extra", timeout=timeout)
    sys.exit(0)
if (fault in ("hang-outside", "wait") and me) or fault == "idle":
    if fault == "hang-outside":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"FAULT {time.time():.6f}", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)
clusterlab.barrier("end", timeout=timeout)
print(f"rank {rank} done", flush=True)
