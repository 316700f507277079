"""MkDocs hooks of the lab's site (mkdocs.yml names this file): the live-run cache meets ``mkdocs serve``.

- Every build counts the live runs it took from the cache and the ones it
  executed, and logs one line saying so (and which ones ran): after a prose edit
  it should say ``0 executed``.
- ``mkdocs serve`` rebuilds in the same process, where some pages import
  clusterlab to compute in-process (Part 2's rank table, the references). When
  clusterlab's source changed since it was imported, those modules are dropped
  before the build, so the next import reads the new code.
- mkdocs-jupyter's cache is keyed on the notebook alone; its directory is put
  under a digest of clusterlab's source and of the environment, so a notebook
  runs again when the code it imports changes.
- ``watch:`` in mkdocs.yml adds ``examples/`` and ``src/clusterlab/`` to what
  ``mkdocs serve`` watches. Neither this process nor the runs write bytecode
  there, so a rebuild never triggers another one.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.clusterlab")

# The in-process imports of a serve process write no __pycache__ into the watched src/.
sys.dont_write_bytecode = True


def _forget_stale_clusterlab() -> None:
    """Drop the imported clusterlab modules if the source changed since they were imported."""
    loaded = sys.modules.get("clusterlab._docs.cache")
    if loaded is None or loaded.package_digest() == loaded.IMPORTED_SOURCE:
        return
    for name in [n for n in sys.modules if n == "clusterlab" or n.startswith("clusterlab.")]:
        del sys.modules[name]
    log.info("clusterlab's source changed: its modules are imported afresh for this build")


def on_config(config):
    _forget_stale_clusterlab()
    from clusterlab._docs import cache

    jupyter = config.plugins.get("mkdocs-jupyter")
    if jupyter is not None:
        directory = cache.notebook_directory(_root(config))
        if directory is None:
            jupyter.config["cache"] = False
        else:
            jupyter.config["cache"] = True
            jupyter.config["cache_dir"] = str(directory)
    return config


def on_pre_build(config):
    from clusterlab._docs import cache

    cache.STATS.reset()
    cache.forget()


def on_post_build(config):
    from clusterlab._docs import cache

    log.info(f"clusterlab: {cache.STATS.summary()}")
    for shown, seconds in cache.STATS.executed:
        log.info(f"clusterlab: ran {shown} ({seconds:.1f} s)")
    cache.evict(_root(config))


def _root(config) -> Path:
    """The project root: the directory of mkdocs.yml (what markdown-exec exports as MKDOCS_CONFIG_DIR)."""
    return Path(config.config_file_path).resolve().parent
