"""``clusterlab exercise``: the lab's exercises, and a checker that runs your attempt for real.

**Usage**

1. See what there is to do::

       clusterlab exercise list

2. Edit the starter file an exercise names (its page shows it too), then check it::

       clusterlab exercise check env-rank                       # checks examples/exercises/env-rank/...
       clusterlab exercise check env-rank my_worker.py          # or any file of yours

**What a check does**

It runs the attempt the way the lesson runs things: a worker under
``clusterlab simulate`` or ``launch``, a batch script under ``clusterlab sbatch``
(after ``--lint``), a set of variables under ``clusterlab env``, a prediction
against the job it predicts. Real processes, each job with a timeout; a barrier
nobody else reaches gives up after 10 s. Then every finding is one line, ``ok``
or ``FAIL`` with the fix, and a failed check shows the last lines the job printed.

**Exit status**: 0 when every finding is ok, 1 when one is not, 2 for a usage
mistake (an unknown id, a missing file, torch missing for a torch exercise).

Run it from the repository root: the starters live in ``examples/exercises/``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import UsageError


def list_exercises(_args=None) -> int:
    from .catalog import all_exercises

    exercises = all_exercises()
    width = max(len(e.id) for e in exercises)
    page = None
    for e in exercises:
        if e.page != page:
            page = e.page
            print(f"{'' if page == exercises[0].page else chr(10)}docs/{page}")
        print(f"  {e.id:<{width}}  {e.task}")
    print(f"\n{len(exercises)} exercises. Check one with: clusterlab exercise check ID [FILE]")
    return 0


def _display(path: Path) -> str:
    """A path as the reader would type it here: relative to the current directory when it is under it."""
    path = path.absolute()
    here = Path.cwd().absolute()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def _typed(shown: str, attempt: Path, root: Path) -> str:
    """A command line with absolute paths to the attempt and the repository spelled relative to here."""
    shown = shown.replace(str(attempt.absolute()), _display(attempt))
    prefix = str(root.absolute()) + os.sep
    return shown.replace(prefix, _display(root) + os.sep if _display(root) != "." else "")


def check(exercise_id: str, attempt: str | None = None, out=None) -> int:
    """Check an attempt at an exercise and print the verdict; 0 if it passes, 1 if not."""
    from .catalog import find
    from .checking import project_root, tail

    out = out or sys.stdout
    exercise = find(exercise_id)
    root = project_root()
    path = Path(attempt) if attempt else root / exercise.starter
    if not path.is_file():
        raise UsageError(f"attempt file {str(path)!r} does not exist; give the file you edited, "
                         f"or run from the repository root to check {exercise.starter}")
    for module in exercise.needs:
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"exercise {exercise.id} runs {module}, which is not installed here: "
                             f"`make serve` or `make test` installs it into .venv")
    print(f"exercise {exercise.id}: {exercise.task}", file=out)
    print(f"attempt:  {_display(path)}", file=out)
    # Absolute, but through the same links as given: a page's build sees the project through symlinks.
    verdict = exercise.check(path.absolute(), root.absolute())
    # Commands are shown as they would be typed here: the attempt by the path given, not its absolute one.
    for job in verdict.jobs:
        print(f"ran:      {_typed(job.shown, path, root)}  ({job.status()}, {job.seconds:.1f} s)", file=out)
    for finding in verdict.findings:
        print(f"  {'ok  ' if finding.ok else 'FAIL'}  {finding.text}", file=out)
        if finding.fix:
            print(f"        fix: {finding.fix}", file=out)
    if not verdict.passed:
        if verdict.jobs:
            job = verdict.jobs[-1]
            print("the last lines that command printed:", file=out)
            for line in tail(job) or ["(nothing)"]:
                print(f"  | {line}", file=out)
        failed = len(verdict.failures)
        print(f"NOT YET: {failed} of {len(verdict.findings)} finding(s) failed. "
              f"The hint is on the page: docs/{exercise.page}, exercise {exercise.id}.", file=out)
        return 1
    print(f"PASSED: all {len(verdict.findings)} findings ok.", file=out)
    return 0


def register(sub) -> None:
    from ..cli import RawDescriptionHelpFormatter

    p = sub.add_parser("exercise", help="list the lab's exercises and check your attempts",
                       description=__doc__.split("**Exit status**")[0], formatter_class=RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="action", metavar="ACTION")
    commands.required = True
    ls = commands.add_parser("list", help="every exercise: id, page, task")
    ls.set_defaults(func=list_exercises)
    c = commands.add_parser("check", help="run an attempt for real and say what is right and what is not")
    c.add_argument("id", help="the exercise, as `clusterlab exercise list` names it")
    c.add_argument("file", nargs="?", help="the attempt (default: the exercise's starter file, which you edit)")
    c.set_defaults(func=lambda a: check(a.id, a.file))
