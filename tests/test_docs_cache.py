"""The site's run cache and log folding (clusterlab._docs): pure logic, on a small project in tmp_path.

The key must change whenever something a run depends on changes, and only then:
an edit to one example must not re-run the commands that never name it.
"""

from __future__ import annotations

import os

import pytest

from clusterlab._docs import cache, fold
from clusterlab._docs.runs import FREE_PORT, _spelled


@pytest.fixture
def project(tmp_path):
    (tmp_path / "examples" / "slurm").mkdir(parents=True)
    (tmp_path / "examples" / "a.py").write_text("print('a')\n")
    (tmp_path / "examples" / "b.py").write_text("print('b')\n")
    (tmp_path / "examples" / "slurm" / "job.sbatch").write_text(
        '#!/bin/bash\nsrun python "$SLURM_SUBMIT_DIR/examples/slurm/worker.py"\n')
    (tmp_path / "examples" / "slurm" / "worker.py").write_text("print('worker')\n")
    return tmp_path


def key(project, *argv, env=None):
    return cache.key({"argvs": [[_spelled(a) for a in argv]], "env": {k: _spelled(v) for k, v in (env or {}).items()}},
                     project)


def test_an_edit_changes_the_key_of_the_runs_that_name_the_file_only(project):
    a, b = key(project, "clusterlab", "simulate", "examples/a.py"), key(project, "clusterlab", "simulate", "examples/b.py")
    (project / "examples" / "a.py").write_text("print('a, edited')\n")
    assert key(project, "clusterlab", "simulate", "examples/a.py") != a
    assert key(project, "clusterlab", "simulate", "examples/b.py") == b


def test_a_file_mentioned_by_a_named_file_counts_too(project):
    """A batch script runs $SLURM_SUBMIT_DIR/examples/slurm/worker.py: an edit to the worker re-runs the job."""
    found = cache.mentioned_files(project, ["examples/slurm/job.sbatch"])
    assert set(found) == {"examples/slurm/job.sbatch", "examples/slurm/worker.py"}
    before = key(project, "clusterlab", "sbatch", "examples/slurm/job.sbatch")
    (project / "examples" / "slurm" / "worker.py").write_text("print('worker, edited')\n")
    assert key(project, "clusterlab", "sbatch", "examples/slurm/job.sbatch") != before


def test_flag_values_and_directories_name_files(project):
    assert "examples/a.py" in cache.mentioned_files(project, ["--script=examples/a.py"])
    assert set(cache.mentioned_files(project, ["examples/slurm"])) == {"examples/slurm/job.sbatch",
                                                                      "examples/slurm/worker.py"}


def test_paths_outside_the_project_are_not_followed(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.py"
    outside.write_text("x = 1\n")
    assert cache.mentioned_files(project, [str(outside), "../" + outside.name, "/etc/hostname"]) == {}


def test_a_free_port_is_the_same_run_whatever_its_number(project):
    assert _spelled(FREE_PORT) == "<free port>"
    with_port = key(project, "clusterlab", "launch", "--master-port", FREE_PORT, "examples/a.py")
    assert with_port == key(project, "clusterlab", "launch", "--master-port", FREE_PORT, "examples/a.py")
    assert with_port != key(project, "clusterlab", "launch", "--master-port", "29500", "examples/a.py")


def test_variables_the_page_sets_are_part_of_the_key(project):
    assert key(project, "clusterlab", "env", env={"RANK": "5"}) != key(project, "clusterlab", "env", env={"RANK": "6"})


def test_the_builders_variables_that_reach_runs_count_but_a_test_tag_does_not(project, monkeypatch):
    base = key(project, "clusterlab", "env")
    monkeypatch.setenv("CLUSTERLAB_TEST_TAG", "something-else")
    cache.forget()
    assert key(project, "clusterlab", "env") == base
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "DETAIL")
    cache.forget()
    assert key(project, "clusterlab", "env") != base
    monkeypatch.delenv("TORCH_DISTRIBUTED_DEBUG")
    cache.forget()


def test_clusterlabs_source_is_in_the_key_but_the_sites_own_helpers_are_not(monkeypatch):
    """An edit to the launcher changes every key; an edit to how a log is folded changes none."""
    seen = []
    monkeypatch.setattr(cache, "package_digest", lambda include=lambda p: True: seen.append(include) or "x")
    cache.source_digest()
    include = seen[0]
    package = cache.PACKAGE
    assert include(package / "run.py") and include(package / "_docs" / "runs.py")
    assert not include(package / "_docs" / "fold.py") and not include(package / "_docs" / "hooks.py")


def test_entries_are_stored_and_loaded_and_old_ones_evicted(project, monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTERLAB_DOCS_CACHE", str(tmp_path / "cache"))
    cache.store(project, "abc", {"runs": [{"shown": "x"}]})
    assert cache.load(project, "abc")["runs"] == [{"shown": "x"}]
    assert cache.load(project, "missing") is None
    entry = tmp_path / "cache" / "runs" / "abc.json"
    os.utime(entry, (1, 1))
    assert cache.evict(project) == 1 and not entry.exists()
    monkeypatch.setenv("CLUSTERLAB_DOCS_CACHE", "off")
    cache.store(project, "abc", {"runs": []})
    assert cache.load(project, "abc") is None


def test_an_excerpt_keeps_the_chosen_lines_and_counts_each_gap():
    lines = [f"line {i}" for i in range(10)]
    assert fold.excerpt(lines, head=2, tail=1) == ["line 0", "line 1", "[... 7 lines not shown: the whole log is below ...]",
                                                   "line 9"]
    assert fold.excerpt(lines, keep=lambda x: x.endswith(("3", "4"))) == [
        "[... 3 lines not shown: the whole log is below ...]", "line 3", "line 4",
        "[... 5 lines not shown: the whole log is below ...]"]
    assert fold.excerpt(lines, at={0}) == ["line 0", "[... 9 lines not shown: the whole log is below ...]"]


def test_a_short_log_is_shown_whole_and_a_long_one_folded():
    short = fold.fold("$ cmd", ["a", "b"])
    assert "???" not in short and short.count("````") == 2
    long = fold.fold("$ cmd", [f"l{i}" for i in range(40)], "[exit status 1]")
    assert '??? abstract "The whole output (40 lines)"' in long
    assert long.count("[exit status 1]") == 2  # under the excerpt and under the whole log
    body = long.split("???", 1)[1]
    assert all(f"l{i}" in body for i in range(40))


def test_a_pages_run_keeps_stdout_and_stderr_in_the_order_they_were_written(monkeypatch):
    """One pipe for both streams, unbuffered: the launcher's stderr lines stay where they were printed.

    (Part 5's own helper captured the two streams apart and printed stdout, then stderr, which put
    the launcher's opening lines after the [check] lines.)
    """
    from clusterlab._docs import command

    monkeypatch.setenv("CLUSTERLAB_DOCS_CACHE", "off")
    script = ("import sys\n"
              "for i in range(20):\n"
              "    print(f'out {i}')\n"
              "    print(f'err {i}', file=sys.stderr)\n")
    result = command("python", "-c", script, timeout=60)
    assert result.lines == [f"{stream} {i}" for i in range(20) for stream in ("out", "err")]
