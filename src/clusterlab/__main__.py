"""``python -m clusterlab`` is the ``clusterlab`` command."""

from .cli import console

console()
