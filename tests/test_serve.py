"""`mkdocs serve` starts, serves the home page, and stops without leaving anything behind.

The full site runs every example while it builds; this smoke test only needs the
server, so it serves the real docs and theme through a config that inherits
mkdocs.yml and keeps just the search plugin (no build-time execution).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from test_site import ROOT

STARTUP_TIMEOUT = 90  # seconds until "Serving on ..." (a cold build of every page's Markdown)

pytestmark = pytest.mark.timeout(150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mkdocs_serve_serves_the_home_page(tmp_path):
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\n"
        f"docs_dir: {ROOT / 'docs'}\n"
        "plugins:\n  - search\n"
        # without mkdocs-jupyter the notebook is a plain file, not a page
        "validation:\n  nav:\n    not_found: info\n",
        encoding="utf-8",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mkdocs", "serve", "--no-livereload", "-a", f"127.0.0.1:{port}", "-f", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    log: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:  # wait for mkdocs to say it is serving, never a blind sleep
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"mkdocs serve did not start within {STARTUP_TIMEOUT}s:\n{''.join(log)}")
            if line is None:
                pytest.fail(f"mkdocs serve exited with {proc.wait()}:\n{''.join(log)}")
            log.append(line)
            if f"Serving on http://127.0.0.1:{port}/" in line:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
            body = response.read().decode()
        assert "Multi-node distributed training, on one machine" in body
        assert 'data-md-component="palette"' in body  # the Material theme, with its toggle
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: mkdocs serve shuts down and removes its temp site
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        proc.stderr.close()
    assert not reader.is_alive()
