"""`mkdocs serve`: it serves, an edit to prose is served without re-running anything, and an edit to an
example re-runs only the commands that use it.

The first test is a smoke test through a config that keeps only the search plugin
(no build-time execution). The second serves a copy of the project with the real
mkdocs.yml - every plugin, every live run - sharing the worktree's run cache
(``CLUSTERLAB_DOCS_CACHE``), so only what is not cached yet runs on its first build.
It then edits the copy: a sentence on a page, then a comment in an example, and
reads the server's log and pages after each rebuild. The time from saving the
sentence to the page serving it is written to ``test-artifacts/serve-edit.json``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from helpers import needs_docs
from test_site import ROOT

needs_docs()

STARTUP_TIMEOUT = 90  # seconds until "Serving on ..." (a cold build of every page's Markdown)
FULL_STARTUP_TIMEOUT = 900  # the real site, every live run not yet cached executed (a cold CI machine)
REBUILD_TIMEOUT = 180  # one rebuild after an edit, everything but the edited example's runs cached

pytestmark = pytest.mark.timeout(150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `mkdocs serve` process whose log lines are read by a thread, so waits have bounds."""

    def __init__(self, config, cwd, env=None, livereload=True):
        self.port = free_port()
        argv = [sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{self.port}", "-f", str(config)]
        if not livereload:
            argv.insert(4, "--no-livereload")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "NO_MKDOCS_2_WARNING": "1", **(env or {})})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The next log line matching ``pattern``; fails the test on a timeout or an exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"mkdocs serve printed no {pattern!r} within {timeout}s:\n{''.join(self.log[-40:])}")
            if line is None:
                pytest.fail(f"mkdocs serve exited with {self.proc.wait()}:\n{''.join(self.log[-40:])}")
            self.log.append(line)
            if re.search(pattern, line):
                return line

    def drain(self) -> None:
        """Move the log lines printed so far into ``self.log`` (for a failure's message)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.log.append(line)

    def serving(self, timeout: float) -> None:
        """Wait for "Serving on URL"; pages are under that URL's path (mkdocs.yml's site_url has one)."""
        line = self.wait_for(rf"Serving on http://127.0.0.1:{self.port}/", timeout)
        self.base = re.search(r"Serving on (http://\S+?)/?$", line.strip()).group(1)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=30) as response:
            assert response.status == 200
            return response.read().decode()

    def current(self, path: str) -> str:
        """The page as served now; empty while a rebuild has it half written (a 404)."""
        try:
            return self.get(path)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            return ""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C: mkdocs serve shuts down and removes its temp site
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        self.proc.stderr.close()
        assert not self.reader.is_alive()


def test_mkdocs_serve_serves_the_home_page(tmp_path):
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\n"
        f"docs_dir: {ROOT / 'docs'}\n"
        "plugins:\n  - search\n"
        "hooks: []\n"
        "watch: []\n"
        # without mkdocs-jupyter the notebook is a plain file, not a page
        "validation:\n  nav:\n    not_found: info\n",
        encoding="utf-8",
    )
    server = Server(config, ROOT, livereload=False)
    try:
        server.serving(STARTUP_TIMEOUT)
        body = server.get("/")
        assert "Multi-node distributed training, on one machine" in body
        assert 'data-md-component="palette"' in body  # the Material theme, with its toggle
    finally:
        server.stop()


def _copy_project(dest):
    """The files the site reads, copied (the package itself stays installed from the worktree)."""
    for name in ("docs", "examples", "bench", "mkdocs.yml", "fake_multi_node_launcher.py", "README.md"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / "src").symlink_to(ROOT / "src")  # mkdocs.yml names the hooks and the watched source under src/


@pytest.mark.timeout(FULL_STARTUP_TIMEOUT + 3 * REBUILD_TIMEOUT)
def test_an_edit_is_served_without_running_what_did_not_change(tmp_path):
    _copy_project(tmp_path)
    cache = ROOT / "build" / "docs-cache"  # shared with the worktree's own builds
    server = Server(tmp_path / "mkdocs.yml", tmp_path, env={"CLUSTERLAB_DOCS_CACHE": str(cache)})
    try:
        started = time.monotonic()
        server.serving(FULL_STARTUP_TIMEOUT)
        first_build = next(line for line in server.log if "live run(s)" in line).split("clusterlab: ", 1)[1].strip()
        first_seconds = time.monotonic() - started

        # 1. Prose: nothing runs again, and the page serves the new sentence.
        page = tmp_path / "docs" / "part2-two-nodes.md"
        marker = f"An edited sentence {uuid.uuid4().hex}."
        started = time.monotonic()
        page.write_text(page.read_text() + f"\n{marker}\n")
        deadline = started + REBUILD_TIMEOUT
        while marker not in server.current("/part2-two-nodes/"):
            if time.monotonic() > deadline:
                server.drain()
                pytest.fail(f"the edit was not served within {REBUILD_TIMEOUT}s:\n{''.join(server.log[-40:])}")
            time.sleep(0.05)
        served = time.monotonic() - started
        summary = server.wait_for(r"clusterlab: \d+ live run\(s\)", REBUILD_TIMEOUT)
        assert " 0 executed" in summary, summary

        # 2. An example: exactly the runs that use it run again, the others come from the cache.
        server.wait_for("Reloading browsers|Documentation built", REBUILD_TIMEOUT)
        example = tmp_path / "examples" / "staggered_barrier.py"
        example.write_text(example.read_text() + f"# edited {uuid.uuid4().hex}\n")
        summary = server.wait_for(r"clusterlab: \d+ live run\(s\)", REBUILD_TIMEOUT)
        executed = int(re.search(r"(\d+) executed", summary).group(1))
        ran = [server.wait_for(r"clusterlab: ran ", 10) for _ in range(executed)]
        assert executed >= 1 and all("staggered_barrier.py" in line for line in ran), ran
    finally:
        server.stop()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "serve-edit.json").write_text(json.dumps({
        "first_build": first_build,
        "first_build_seconds": round(first_seconds, 1),
        "prose_edit_served_seconds": round(served, 2),
        "example_edit_reran": [line.split("ran ", 1)[1].strip() for line in ran],
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": os.getloadavg(),
    }, indent=2))
    print(f"\nprose edit served in {served:.2f} s; an example edit re-ran {executed} run(s)")
