"""An exercise of :mod:`clusterlab.exercise` as a page shows it: a Material admonition titled "Exercise".

A page's block does::

    from clusterlab._docs.exercises import exercises
    print(exercises("part3-barriers.md"))

and gets, for each exercise of that page, the task, the starter file (read from
disk, so the page shows the file the reader edits), the command that checks it,
a folded hint, and a folded solution followed by what the checker said about that
solution while the site was built (a live run, cached like every other).
"""

from __future__ import annotations

from textwrap import indent

from ..exercise.catalog import Exercise, all_exercises, on_page
from .runs import ROOT, command


def _code(language: str, path: str, text: str) -> str:
    return f'````{language} title="{path}"\n{text.rstrip()}\n````'


def render(exercise: Exercise, *, verify: bool = True) -> str:
    """Markdown for one exercise; with ``verify``, the checker runs on the solution and must pass."""
    starter = (ROOT / exercise.starter).read_text(encoding="utf-8")
    solution = (ROOT / exercise.solution).read_text(encoding="utf-8")
    parts = [
        exercise.statement,
        _code(exercise.language, exercise.starter, starter),
        f"Edit it, then check it (from the repository root):\n\n```bash\nclusterlab exercise check {exercise.id}\n```",
        f'??? tip "Hint"\n\n{indent(exercise.hint, "    ")}',
    ]
    fold = [_code(exercise.language, exercise.solution, solution)]
    if verify:
        result = command("clusterlab", "exercise", "check", exercise.id, exercise.solution, timeout=300)
        result.expect_text("PASSED")
        fold.append("What the checker said about this solution while this page was built:")
        fold.append(result.fold(head=4, tail=4))
    parts.append('??? success "Solution"\n\n' + indent("\n\n".join(fold), "    "))
    body = indent("\n\n".join(parts), "    ")
    return f'!!! exercise "Exercise: {exercise.title}"\n\n{body}\n'


def exercises(page: str, *, verify: bool = True) -> str:
    """Every exercise of ``page`` (e.g. ``"failures.md"``), in order, under an "Exercises" heading."""
    found = on_page(page)
    if not found:
        raise ValueError(f"no exercise is declared for page {page!r} (clusterlab/exercise/catalog.py)")
    return "\n".join(render(e, verify=verify) for e in found)


def table() -> str:
    """Every exercise as a Markdown table: id, page, task (the site's index of them)."""
    rows = ["| exercise | page | task |", "|---|---|---|"]
    for e in all_exercises():
        task = e.task.replace("|", "\\|")
        rows.append(f"| `{e.id}` | [{e.page.removesuffix('.md')}]({e.page}#exercises) | {task} |")
    return "\n".join(rows) + "\n"
