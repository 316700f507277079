"""The lab website: one strict build, then every lab page checked for the logs it promises.

The expected log lines are computed here from the rank formula (node = rank // 4,
local = rank % 4 for 2 nodes x 4 processes), not copied from the launcher, so a
launcher that mislabels a rank fails the site test too.
"""

from __future__ import annotations

import atexit
import functools
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import needs_docs

needs_docs()

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 540  # seconds; the whole build runs every example on the site

# A first build on a busy machine executes every page's launches and the notebook.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Build:
    site: Path
    returncode: int
    log: str
    seconds: float

    def page(self, name: str) -> str:
        """The raw HTML of a page, ``"part2-two-nodes"`` -> ``site/part2-two-nodes/index.html``."""
        return (self.site / name / "index.html").read_text(encoding="utf-8")

    def text(self, name: str) -> str:
        """A page's article as plain text: tags stripped, entities decoded."""
        page = self.page(name)
        article = page[page.index("<article"):page.index("</article>")]
        article = re.sub(r"<svg.*?</svg>", "", article, flags=re.S)
        return html.unescape(re.sub(r"<[^>]+>", "", article))


@functools.cache
def strict_build() -> Build:
    """Build the site once per test session (shared with test_browser.py) into a temp dir."""
    import time

    out = Path(tempfile.mkdtemp(prefix="clusterlab-site-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    return Build(out, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


@pytest.fixture(scope="session")
def built() -> Build:
    build = strict_build()
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed ({build.returncode}):\n{build.log[-6000:]}")
    return build


LAB_PAGES = ("part1-environment", "part2-two-nodes", "part3-barriers", "failures", "real-cluster")
#: Every page of the course, in the reader's order; each ends with exercises.
COURSE = ("part1-environment", "part2-two-nodes", "part3-barriers", "part4-slurm", "part5-deepspeed", "failures",
          "debugging", "real-cluster")


def tag(rank: int, nproc: int = 4) -> str:
    node, local = divmod(rank, nproc)
    return f"[node{node} rank{rank} local{local}]"


def test_strict_build_has_no_warnings(built):
    # MkDocs' own log lines look like "WARNING -  ..." / "ERROR -  ..."; a kernel's
    # "[IPKernelApp] WARNING | ..." on stderr is not one of them.
    problems = [line for line in built.log.splitlines() if re.match(r"\s*(WARNING|ERROR)\s+-", line)]
    assert problems == []


def test_no_page_shows_a_traceback(built):
    """No block of the build failed. A worker's traceback a page shows on purpose (the debugging page's
    torch errors) is a line of the job's log, behind its rank's tag; a failed block's is not."""
    def failed(path):
        text = html.unescape(re.sub(r"<[^>]+>", "", path.read_text("utf-8")))
        return re.search(r"^(?!\[node\d+ rank\d+ local\d+\] |\[clusterlab\] ).*Traceback \(most recent call last\)",
                         text, re.M)

    pages = [p for p in built.site.rglob("*.html") if failed(p)]
    assert pages == []


def test_part1_shows_every_worker_environment(built):
    text = built.text("part1-environment")
    for rank in range(8):
        node, local = divmod(rank, 4)
        assert f"{tag(rank)} RANK={rank} LOCAL_RANK={local} WORLD_SIZE=8 LOCAL_WORLD_SIZE=4 NODE_RANK={node}" in text
    # clusterlab env read the same worker back from every launcher's names (rank 5 = node 1, local 1)
    for launcher in ("manual exports", "torchrun", "Slurm", "OpenMPI", "DeepSpeed"):
        assert f"launcher: {launcher}" in text
    # the launcher table is rendered from env.py's docstring
    assert "SLURM_PROCID" in text and "OMPI_COMM_WORLD_LOCAL_RANK" in text and "CROSS_RANK" in text


def test_part2_shows_ranks_0_to_7_with_their_node_and_local_rank(built):
    text = built.text("part2-two-nodes")
    for rank in range(8):
        node, local = divmod(rank, 4)
        line = f"{tag(rank)} node_rank={node} local_rank={local} global_rank={rank} world_size=8"
        # the seed's script, `clusterlab simulate`, and one of the two terminals
        assert text.count(line) >= 3, line
    for node in (0, 1):
        assert f"clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank {node}" in text
    assert "attempt_0/node1/1/stdout.log" in text


def test_part3_shows_ranks_leaving_the_barrier_together_and_both_errors(built):
    text = built.text("part3-barriers")
    for rank in range(8):
        assert f"{tag(rank)} left barrier 'step'" in text
    assert '<figure class="lab-figure"><svg' in built.page("part3-barriers")
    assert "never arrived" in text  # the timeout error names who did not come
    assert "'eval'" in text and "'train'" in text  # the mismatch error names both barriers


def test_failures_page_shows_the_crash_summary_and_a_restart(built):
    text = built.text("failures")
    assert f"{tag(5)} step 1: simulated CUDA error" in text
    assert "[exit status 1]" in text
    for rank in range(8):
        assert f"{tag(rank)} attempt 1: done" in text


def test_real_cluster_page_runs_torch_under_clusterlab_torchrun_and_srun(built):
    text = built.text("real-cluster")
    assert f"{tag(3, 2)} I am rank 3/4" in text
    for rank in range(4):  # clusterlab srun --label: the task id (SLURM_PROCID) is the rank
        node, local = divmod(rank, 2)
        assert f"{rank}: I am rank {rank}/4 node {node}/2 local {local}/2" in text
        assert f"{rank}: all_reduce(rank) = 6 (expected 6)" in text  # srun: 0 + 1 + 2 + 3
        assert f"{tag(rank, 2)} all_reduce(rank) = 6 (expected 6)" in text  # clusterlab simulate
    assert "(from torchrun)" in text and "all_reduce(rank) = 1 (expected 1)" in text  # torchrun, 2 ranks
    assert "Skipped" not in text
    # its batch script has no fixed port, and says so with the linter
    assert "MASTER_PORT=29500" not in text and "examples/portable_worker.sbatch: no problems found" in text
    # srun does not cancel the step when a task crashes, unless -K
    assert "the step is cancelled" not in text and "KillOnBadExit=0" in text


def test_pages_show_the_code_they_run(built):
    """Every example a lab page includes appears on it verbatim: the code shown is the code run."""
    shown = {
        "part3-barriers": ("staggered_barrier.py", "barrier_timeout.py", "barrier_mismatch.py"),
        "failures": ("crash.py", "flaky.py"),
        "real-cluster": ("portable_worker.py",),
        "part1-environment": ("show_env.py",),
    }
    for page, scripts in shown.items():
        text = built.text(page)
        for script in scripts:
            source = (ROOT / "examples" / script).read_text()
            for line in source.splitlines():
                assert line in text, f"{page} does not show {script} line {line!r}"


def test_reference_is_generated_from_the_cli_and_the_api(built):
    cli = built.text("reference/cli")
    for command in ("launch", "simulate", "env"):
        assert f"usage: clusterlab {command}" in cli
    api = built.page("reference/api")
    import clusterlab

    for name in clusterlab.__all__:
        assert f'id="{name.lower()}"' in api, name


def test_notebook_outputs_are_present(built):
    page = built.page("notebooks/zero_memory")
    assert re.search(r'<img[^>]+src="data:image/(png|svg)', page) or "jp-OutputArea-output" in page


def test_every_lab_page_has_rank_log_lines(built):
    for name in LAB_PAGES:
        assert re.search(r"\[node\d rank\d local\d\]", built.text(name)), name


def test_every_course_page_ends_with_at_least_two_exercises(built):
    from clusterlab.exercise.catalog import on_page

    for name in COURSE:
        page = built.page(name)
        count = page.count('class="admonition exercise"')
        assert count == len(on_page(f"{name}.md")) >= 2, name
        assert 'id="exercises"' in page, name
        text = built.text(name)
        for exercise in on_page(f"{name}.md"):
            assert f"clusterlab exercise check {exercise.id}" in text
            # the solution is shown with what the checker said about it, live
            assert f"$ clusterlab exercise check {exercise.id}" in text and f"attempt:  {exercise.solution}" in text
        assert text.count("PASSED: all") == count, name


def test_the_exercises_index_lists_every_exercise(built):
    from clusterlab.exercise.catalog import all_exercises

    text = built.text("exercises")
    for exercise in all_exercises():
        assert exercise.id in text and exercise.task.replace("`", "") in text


def test_debugging_page_explains_first_failure_and_culprit_with_torch_live(built):
    text = built.text("debugging")
    assert "rank 6 on node1 never arrived" in text and "root cause (first observed failure)" in text
    assert "It is never rank 6." in text
    assert "Is there a distributed collective mismatch in your code?" in text  # gloo, without DETAIL
    assert "Detected mismatch between collectives on ranks" in text  # with TORCH_DISTRIBUTED_DEBUG=DETAIL
    assert "TensorShape=[4]" in text and "TensorShape=[6]" in text
    assert "examples/debugging/requeue.sbatch: no problems found" in text
    assert "[signal-without-b]" in text


def test_no_page_shows_a_scratch_path(built):
    """A command a page shows works when pasted at the repository root: no build directory in it."""
    for path in built.site.rglob("*.html"):
        html_text = path.read_text("utf-8")
        for scratch in ("docs-runs", "clusterlab-exercise-", "docs-cache"):
            assert scratch not in html_text, (path, scratch)


def test_home_page_says_linux_only(built):
    text = built.text("")
    assert "macOS" not in text and "Linux" in text


def test_long_logs_are_folded_behind_an_excerpt(built):
    """A long log shows an excerpt with its gaps counted, and the whole log in a collapsed block."""
    page = built.page("failures")
    assert "lines not shown: the whole log is below" in page
    assert re.search(r'<details class="abstract">\s*<summary>The whole output \(\d+ lines\)</summary>', page)


def test_navigation_runs_through_the_course_then_reference_then_contributors():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
    sections = [next(iter(item)) for item in nav]
    assert sections == ["Home", "The lab", "Reference", "For contributors"]

    def files(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from files(value) if isinstance(value, list) else [value]

    lab = [f.removesuffix(".md") for f in files(nav[1]["The lab"]) if f.endswith(".md")]
    assert lab == list(COURSE)
    contributors = list(files(nav[3]["For contributors"]))
    assert contributors == ["guarantees.md", "performance.md"]
