"""The exercises: every one passes its solution and fails a wrong attempt with a message that helps.

Each check runs the attempt for real (launchers, srun, sbatch, zero, torch), so
these are integration tests. The expected phrases are the ones a reader needs to
find the mistake: the finding that names it, or the fix.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys

import pytest
from helpers import ROOT

from clusterlab.errors import UsageError
from clusterlab.exercise import check
from clusterlab.exercise.catalog import PAGES, all_exercises, find, on_page

pytestmark = pytest.mark.timeout(400)  # a torch check on a loaded 2-core machine

DATA = ROOT / "tests" / "data" / "exercises"
LAB_PAGES = ("part1-environment.md", "part2-two-nodes.md", "part3-barriers.md", "part4-slurm.md",
             "part5-deepspeed.md", "failures.md", "debugging.md", "real-cluster.md")

#: Wrong attempts: "starter" is the file the reader starts from; the rest live in tests/data/exercises.
#: Each with a phrase the checker's output must contain.
WRONG = {
    "env-rank": [("starter", "that is its rank on its node"), ("env-rank-fixed4.py", "never a fixed 4"),
                 ("env-rank-reads-rank.py", "the check removes RANK")],
    "env-slurm": [("starter", "no launcher variables found"),
                  ("env-slurm-localid.env", "SLURM_LOCALID=6 is outside 0..3")],
    "node-ranges": [("starter", "not from local rank 0 of each node"),
                    ("node-ranges-fixed4.py", "node 1 printed ['node 1: ranks 4-7']")],
    "two-terminals": [("starter", "each node needs its own, 0 and 1")],
    "barrier-checkpoint": [("starter", "rank 0 has not written the file yet"),
                           ("barrier-checkpoint-poll.py", "not by polling for the file")],
    "barrier-eval": [("starter", "move the barrier out of `if rank == 0`"),
                     ("barrier-eval-no-barrier.py", "before rank 0 finished evaluation 0")],
    "slurm-fix-script": [("starter", "[early-expansion]")],
    "slurm-distribution": [("starter", "no answers yet"),
                           ("slurm-distribution-swapped.txt", "block_task5_node: you said 2, srun says 1")],
    "zero-batch": [("starter", "refused on 12 ranks"),
                   ("zero-batch-micro.json", "train_micro_batch_size_per_gpu is 8; the task keeps it at 4")],
    "zero-traffic": [("starter", "no answers yet"),
                     ("zero-traffic-2psi.txt", "stage3_bytes_sent_per_rank: you said 924, the run measured 1386")],
    "crash-rank2": [("starter", "the summary names rank 5 (local_rank 1) as the root cause")],
    "crash-predict": [("starter", "no answers yet"),
                      ("crash-predict-wrong.txt", "launcher_exit_status: you said 7, the job did 1")],
    "resume": [("starter", "did step 0 again in attempt 1"), ("resume-skips.py", "a step was skipped")],
    "debug-culprit": [("starter", "no answers yet"), ("debug-culprit-yes.txt", "stuck_rank: you said 7, the job says 6")],
    "debug-unused": [("starter", "torch found a collective mismatch"),
                     ("debug-unused-drops-head.py", "every rank should send 6 values")],
    "portable-rank": [("starter", "KeyError: 'RANK'")],
    "srun-crash": [("starter", "no answers yet"),
                   ("srun-crash-cancelled.txt", "default_still_running: you said 0, srun did 3")],
}


def _needs(exercise) -> None:
    for module in exercise.needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"exercise {exercise.id} runs {module}, which is not installed: `make test` installs it")


def _check(exercise_id: str, attempt, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    code = check(exercise_id, str(attempt), out=out)
    return code, out.getvalue()


def test_every_lab_page_has_at_least_two_exercises():
    for page in LAB_PAGES:
        assert len(on_page(page)) >= 2, page
    assert {e.page for e in all_exercises()} == set(LAB_PAGES)
    assert len(PAGES) == len(LAB_PAGES)


def test_every_exercise_has_its_files_and_a_wrong_attempt_under_test():
    for e in all_exercises():
        assert (ROOT / e.starter).is_file(), e.starter
        assert (ROOT / e.solution).is_file(), e.solution
        assert (ROOT / e.starter).read_text() != (ROOT / e.solution).read_text(), e.id
    assert set(WRONG) == {e.id for e in all_exercises()}


def test_every_page_shows_its_exercises():
    """Each lab page renders its exercises through the catalog (one source for page, list and checker)."""
    for page in LAB_PAGES:
        assert f'exercises("{page}")' in (ROOT / "docs" / page).read_text(), page


@pytest.mark.parametrize("exercise_id", [e.id for e in all_exercises()])
def test_the_solution_passes(exercise_id, monkeypatch):
    exercise = find(exercise_id)
    _needs(exercise)
    code, out = _check(exercise_id, ROOT / exercise.solution, monkeypatch)
    assert code == 0, out
    assert "PASSED" in out and "FAIL " not in out


@pytest.mark.parametrize("exercise_id,attempt,phrase",
                         [(i, a, p) for i, cases in WRONG.items() for a, p in cases])
def test_a_wrong_attempt_fails_with_a_useful_message(exercise_id, attempt, phrase, monkeypatch):
    exercise = find(exercise_id)
    _needs(exercise)
    path = ROOT / exercise.starter if attempt == "starter" else DATA / attempt
    code, out = _check(exercise_id, path, monkeypatch)
    assert code == 1, out
    assert "NOT YET" in out and "FAIL" in out
    assert phrase in out, out


def test_list_names_every_exercise_with_its_page():
    proc = subprocess.run([sys.executable, "-m", "clusterlab", "exercise", "list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for e in all_exercises():
        line = next(line for line in proc.stdout.splitlines() if line.split()[:1] == [e.id])
        assert e.task in line
    for page in LAB_PAGES:
        assert f"docs/{page}" in proc.stdout


@pytest.mark.parametrize("args,phrase", [
    (["check", "no-such-exercise"], "there is no exercise 'no-such-exercise'"),
    (["check", "env-rank", "does/not/exist.py"], "attempt file 'does/not/exist.py' does not exist"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(args, phrase):
    proc = subprocess.run([sys.executable, "-m", "clusterlab", "exercise", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and phrase in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_malformed_answers_file_is_a_usage_error(tmp_path, monkeypatch):
    bad = tmp_path / "answers.txt"
    bad.write_text("stuck_rank = 6\n")
    with pytest.raises(UsageError, match="is not `key: value`"):
        _check("debug-culprit", bad, monkeypatch)
    bad.write_text("stuck_rnak: 6\n")
    with pytest.raises(UsageError, match=r"unknown answer\(s\) \['stuck_rnak'\]"):
        _check("debug-culprit", bad, monkeypatch)
