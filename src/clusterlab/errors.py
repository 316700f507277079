"""The small exception family of clusterlab.

A user mistake (a bad flag, a bad hostlist, a layout that cannot exist) is a
:class:`UsageError`: the command line prints its one-line message and exits with
status 2, never a traceback. Anything else that escapes is a bug in clusterlab.
"""

from __future__ import annotations


class ClusterlabError(Exception):
    """Base class of every error clusterlab raises on purpose."""


class UsageError(ClusterlabError, ValueError):
    """A user mistake: the message names the bad value and the fix."""


class BarrierError(ClusterlabError, RuntimeError):
    """A barrier (or another collective) failed: timeout, name mismatch, lost agent."""
