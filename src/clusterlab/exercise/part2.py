"""Exercises of Part 2, two nodes locally: which rank runs where, and one job from two launchers."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from ..errors import UsageError
from .catalog import Exercise
from .checking import Verdict, free_port, run_job, scratch

PAGE = "part2-two-nodes.md"
NNODES, NPROC = 2, 3  # node-ranges runs 2 nodes x 3: neither the lab's 4 per node nor a square


def check_node_ranges(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    argv = ["clusterlab", "simulate", "--nnodes", str(NNODES), "--nproc-per-node", str(NPROC), "--master-port", "0",
            str(attempt)]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    if not v.expect(job.returncode == 0, "every rank exited 0", f"the job ended with {job.status()}",
                    "read the last lines below"):
        return v
    said: list[tuple[int, int, str]] = []  # (node, local, text) of each "node N: ranks A-B" line
    pattern = re.compile(r"node (\d+): ranks (\d+)-(\d+)")
    placed = job.placement()
    for rank, lines in job.rank_lines().items():
        node, local = placed[rank]
        said += [(node, local, m.group(0)) for line in lines for m in [pattern.search(line)] if m]
    talkers = sorted({(node, local) for node, local, _ in said})
    if not v.expect(talkers == [(n, 0) for n in range(NNODES)],
                    "exactly one rank per node, its local rank 0, printed the node's ranges",
                    f"the lines came from (node, local rank) {talkers}, not from local rank 0 of each node",
                    "let only LOCAL_RANK 0 print (once), on every node"):
        return v
    for node in range(NNODES):
        want = f"node {node}: ranks {node * NPROC}-{node * NPROC + NPROC - 1}"
        got = [text for n, _, text in said if n == node]
        v.expect(got == [want], f"node {node} printed `{want}`",
                 f"node {node} printed {got}; it holds `{want}` ({NNODES} nodes x {NPROC} processes)",
                 "first = node_rank x LOCAL_WORLD_SIZE, last = first + LOCAL_WORLD_SIZE - 1")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a mistake in the reader's command line is a finding, not an exit
        raise UsageError(message)


def _launch_parser() -> argparse.ArgumentParser:
    from ..run import add_launch_args

    parser = _Parser(prog="clusterlab launch", add_help=False)
    add_launch_args(parser, with_node_rank=True)
    return parser


def read_commands(path: Path) -> list[list[str]]:
    """The command lines of a file (``\\`` continues a line, ``#`` lines are comments), split as a shell would."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8", errors="replace"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    try:
        return [shlex.split(line, comments=True) for line in lines]
    except ValueError as exc:
        raise UsageError(f"{path}: a line does not split like a shell command ({exc})") from None


def check_two_terminals(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    commands = read_commands(attempt)
    if not v.expect(len(commands) == 2, "two command lines, one per terminal",
                    f"{len(commands)} command line(s); the job needs one per node",
                    "write two lines: the launcher of node 0 and the launcher of node 1"):
        return v
    parsed = []
    for number, words in enumerate(commands, start=1):
        if words[:2] != ["clusterlab", "launch"]:
            v.fail(f"command {number} starts with {' '.join(words[:2])!r}",
                   "start each node's agent with `clusterlab launch` (torchrun's flags)")
            return v
        try:
            parsed.append(_launch_parser().parse_args(words[2:]))
        except UsageError as exc:
            v.fail(f"command {number}: {exc}", "clusterlab launch --help lists the flags")
            return v
    a, b = parsed
    checks = [
        (all(p.nnodes == "2" for p in parsed), "both say --nnodes 2", "the job has 2 nodes: give --nnodes 2 to both"),
        (all(p.nproc_per_node == "2" for p in parsed), "both say --nproc-per-node 2",
         "2 workers per node: --nproc-per-node 2 on both"),
        (sorted(p.node_rank for p in parsed) == [0, 1], "one is --node-rank 0, the other --node-rank 1",
         f"their node ranks are {a.node_rank} and {b.node_rank}: each node needs its own, 0 and 1"),
        (a.master_addr == b.master_addr and a.master_port == b.master_port,
         "both meet at the same --master-addr and --master-port",
         f"they meet at {a.master_addr}:{a.master_port} and {b.master_addr}:{b.master_port}: give both node 0's"),
        (a.script == b.script, "both run the same script", "both nodes run the same worker script"),
    ]
    for ok, good, bad in checks:
        v.expect(ok, good, bad)
    if v.failures:
        return v
    # Run both for real: on a free port (29500 may be taken here) and with a bounded rendezvous.
    port = str(free_port())
    argvs = []
    for words, p in zip(commands, parsed):
        words = [port if w == str(p.master_port) and i and words[i - 1] in ("--master-port", "--master_port")
                 else w for i, w in enumerate(words)]
        words = [re.sub(r"^(--master[-_]port=)\d+$", rf"\g<1>{port}", w) for w in words]
        if "--rdzv-timeout" not in " ".join(words):
            words[2:2] = ["--rdzv-timeout", "20"]
        argvs.append(words)
    jobs = run_job(argvs, root, timeout=60)
    v.jobs.extend(jobs)
    for job, p in zip(jobs, parsed):
        node = p.node_rank
        placed = job.placement()
        want = {node * 2: (node, 0), node * 2 + 1: (node, 1)}
        v.expect(job.returncode == 0 and placed == want,
                 f"node {node}'s terminal shows ranks {sorted(want)} of the one job",
                 f"node {node}'s terminal ended with {job.status()} and showed ranks {sorted(placed)}",
                 "read that terminal's last lines below")
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="node-ranges",
        page=PAGE,
        title="Which ranks does my node hold?",
        task="on every node, local rank 0 prints the global ranks its node holds: `node N: ranks A-B`",
        statement=(
            "Make one worker per node, the one with local rank 0, print the range of global ranks that "
            "its node holds, as `node N: ranks A-B`. The checker runs it as 2 nodes x 3 processes and "
            "compares each line with the rank map."
        ),
        hint=(
            "Go from the rank formula backwards: node *n*'s first rank is `n * nproc_per_node` and it holds "
            "`nproc_per_node` consecutive ranks. `clusterlab.read_env()` gives `node_rank`, `local_rank` and "
            "`local_world_size`."
        ),
        starter=_example("node-ranges/worker.py"),
        solution=_example("node-ranges/solution.py"),
        check=check_node_ranges,
    ),
    Exercise(
        id="two-terminals",
        page=PAGE,
        title="One job from two launchers",
        task="write the two `clusterlab launch` commands that start a 2 nodes x 2 processes job",
        statement=(
            "Write the two command lines, one per terminal, that start **one** job of 2 nodes with 2 workers "
            "each, running `examples/hello_ranks.py`. The checker reads the flags, then starts both commands "
            "at once (on a free port instead of yours, and with a 20 s rendezvous timeout so a mistake "
            "cannot hang) and checks that each terminal shows its own node's two ranks."
        ),
        hint=(
            "Both launchers describe the same job (`--nnodes`, `--nproc-per-node`) and meet at the same "
            "place (`--master-addr`, `--master-port`); only `--node-rank` differs. The two terminals above "
            "are the same job at 2 x 4."
        ),
        starter=_example("two-terminals/commands.txt"),
        solution=_example("two-terminals/solution.txt"),
        check=check_two_terminals,
    ),
]
