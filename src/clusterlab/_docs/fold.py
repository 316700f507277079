"""Long logs on a page: a short excerpt that teaches, the whole log one click away.

Eight ranks times a few lines each, plus the launcher's own lines, quickly make
forty lines of which the reader needs five. :func:`fold` shows those five (the
lines a page picks, or the head and the tail of the log), marks every gap with
the number of lines it hides, and puts the whole log, unchanged, in a collapsed
Material ``???`` block right under it. Nothing is rewritten: every line shown is
a line the command printed.
"""

from __future__ import annotations

from textwrap import indent

#: A log up to this many lines is shown whole.
SHORT = 24


def _fence(lines: list[str]) -> str:
    return "\n".join(["````text", *lines, "````"])


def _gap(count: int) -> str:
    return f"[... {count} line{'s' if count != 1 else ''} not shown: the whole log is below ...]"


def excerpt(lines: list[str], keep=None, *, head: int = 8, tail: int = 6, at=None) -> list[str]:
    """The lines to show, gaps marked: the line numbers ``at``, or those ``keep(line)`` accepts,
    or else the first ``head`` and the last ``tail``."""
    if at is not None:
        chosen = set(at)
    elif keep is None:
        chosen = set(range(min(head, len(lines)))) | set(range(max(0, len(lines) - tail), len(lines)))
    else:
        chosen = {i for i, line in enumerate(lines) if keep(line)}
    out, hidden = [], 0
    for i, line in enumerate(lines):
        if i in chosen:
            if hidden:
                out.append(_gap(hidden))
                hidden = 0
            out.append(line)
        else:
            hidden += 1
    if hidden:
        out.append(_gap(hidden))
    return out


def fold(command_line: str, lines: list[str], status: str = "", *, keep=None, head: int = 8, tail: int = 6,
         at=None, title: str | None = None, short: int = SHORT) -> str:
    """Markdown for one run: the whole log if it is short (and no lines were picked), else an
    excerpt and the whole log folded away under it."""
    tail_lines = [status] if status else []
    if keep is None and at is None and len(lines) <= short:
        return _titled(_fence([command_line, *lines, *tail_lines]), title) + "\n"
    shown = excerpt(lines, keep, head=head, tail=tail, at=at)
    whole = _fence([command_line, *lines, *tail_lines])
    if shown == lines:  # nothing left out: nothing to fold
        return _titled(whole, title) + "\n"
    label = f"The whole output ({len(lines)} lines)"
    return (_titled(_fence([command_line, *shown, *tail_lines]), title) + "\n\n"
            + f'??? abstract "{label}"\n\n' + indent(whole, "    ") + "\n")


def _titled(fenced: str, title: str | None) -> str:
    if not title:
        return fenced
    first, rest = fenced.split("\n", 1)
    return f'{first} title="{title}"\n{rest}'
