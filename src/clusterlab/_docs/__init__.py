"""The lab site's build-time helpers (private): live runs, their cache, folded logs, exercises.

A page's Python block does::

    from clusterlab._docs import run
    print(run("simulate", "--nnodes", "2", "--nproc-per-node", "4", "examples/hello_ranks.py"))

- :mod:`.runs`: run a command as a real subprocess, with a timeout and an expected
  exit status, in a fresh working directory; :class:`Run` renders it.
- :mod:`.cache`: the cache of finished runs, keyed on everything they depend on.
- :mod:`.fold`: a long log as a short excerpt with the whole log folded under it.
- :mod:`.exercises`: an exercise of the catalog as a Material admonition.
- ``hooks.py``: the MkDocs hooks (named in mkdocs.yml) that tie these to ``mkdocs serve``.
"""

from .runs import FREE_PORT, ROOT, DocsRunError, Run, command, free_port, run, together

__all__ = ["FREE_PORT", "ROOT", "DocsRunError", "Run", "command", "free_port", "run", "together"]
