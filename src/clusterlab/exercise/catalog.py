"""The exercises: one :class:`Exercise` value each, declared next to its check, one module per lab page.

An exercise is a task (one line for ``clusterlab exercise list``, a paragraph for
the page), a hint, a starter file the reader edits, a solution, and a check that
runs an attempt for real and returns a :class:`~clusterlab.exercise.checking.Verdict`.
The pages render the same values (``clusterlab._docs.exercises``), so the site, the
list and the checker cannot disagree about what an exercise asks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .checking import Verdict

#: The modules that declare exercises, in the order of the lab's pages.
PAGES = ("part1", "part2", "part3", "part4", "part5", "failures", "debugging", "real_cluster")


@dataclass(frozen=True)
class Exercise:
    """One exercise. ``starter`` and ``solution`` are paths relative to the repository root."""

    id: str
    page: str  # the lab page, e.g. "part3-barriers.md"
    title: str
    task: str  # one line
    statement: str  # Markdown: the task as the page states it
    hint: str  # Markdown
    starter: str
    solution: str
    check: Callable[[Path, Path], Verdict]  # (attempt, project root) -> verdict
    needs: tuple[str, ...] = ()  # modules that must import (e.g. "torch"), else the check cannot run

    @property
    def language(self) -> str:
        """How the page highlights the starter and the solution."""
        suffix = Path(self.starter).suffix
        return {".py": "python", ".sbatch": "bash", ".json": "json", ".sh": "bash"}.get(suffix, "text")


def all_exercises() -> list[Exercise]:
    """Every exercise, page by page, in the order the pages present them."""
    found: list[Exercise] = []
    for name in PAGES:
        found.extend(importlib.import_module(f"{__package__}.{name}").EXERCISES)
    ids = [e.id for e in found]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise RuntimeError(f"exercise ids declared twice: {duplicated}")
    return found


def find(exercise_id: str) -> Exercise:
    """The exercise called ``exercise_id``, or a UsageError that lists the ids there are."""
    for exercise in all_exercises():
        if exercise.id == exercise_id:
            return exercise
    known = ", ".join(e.id for e in all_exercises())
    raise UsageError(f"there is no exercise {exercise_id!r}; the exercises are: {known} (`clusterlab exercise list`)")


def on_page(page: str) -> list[Exercise]:
    """The exercises of one lab page (``"part3-barriers.md"``), in order."""
    return [e for e in all_exercises() if e.page == page]
