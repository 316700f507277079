"""How long `mkdocs serve` takes to serve an edit to a page's prose (issue 16's target: 3 s).

    .venv/bin/python bench/serve_edit.py                  # the site as it is
    .venv/bin/python bench/serve_edit.py --edits 5 --part5-cached

Serves a copy of the project (the real mkdocs.yml, every plugin) sharing the
worktree's run cache, waits for the first build, then saves a new sentence into
a page N times and times each save until the server serves it. Prints every time,
the median, and what each rebuild ran. Run it on an idle machine after one build
of the site has filled the cache (`make build`).

``--part5-cached`` first routes Part 5's own `zero()` helper, which runs
`clusterlab zero` with subprocess.run, through `clusterlab._docs.run` (in the
copy only), to measure the site as it is once that page uses the run cache.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PART5_HELPER = re.compile(r"def zero\(\*args, expect=0, timeout=120\):.*?print\(\"```\"\)\n", re.S)
PART5_CACHED = '''def zero(*args, expect=0, timeout=120):
    from clusterlab._docs import run

    print(run("zero", *args, expect=expect, timeout=timeout).block())
'''


def copy_project(dest: Path, part5_cached: bool) -> None:
    for name in ("docs", "examples", "bench", "mkdocs.yml", "fake_multi_node_launcher.py", "README.md"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy2(source, dest / name)
    shutil.copytree(ROOT / "bench" / "results", dest / "bench" / "results")
    (dest / "src").symlink_to(ROOT / "src")
    if part5_cached:
        page = dest / "docs" / "part5-deepspeed.md"
        text, count = PART5_HELPER.subn(PART5_CACHED, page.read_text())
        if count != 1:
            raise SystemExit("Part 5's zero() helper is not the one this script knows: measure without --part5-cached")
        page.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=3, help="prose edits to time (default: 3)")
    parser.add_argument("--part5-cached", action="store_true", help="route Part 5's zero() through the run cache")
    parser.add_argument("--page", default="part2-two-nodes", help="the page to edit (default: part2-two-nodes)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for any build (default: 600)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve-edit-") as tmp:
        project = Path(tmp)
        copy_project(project, args.part5_cached)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "CLUSTERLAB_DOCS_CACHE": str(ROOT / "build" / "docs-cache")}
        proc = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{port}"], cwd=project,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log: list[str] = []
        cond = threading.Condition()

        def pump():
            for line in proc.stderr:
                with cond:
                    log.append(line)
                    cond.notify_all()

        threading.Thread(target=pump, daemon=True).start()

        def wait_for(pattern: str, start: int) -> int:
            deadline = time.monotonic() + args.timeout
            with cond:
                while True:
                    for i in range(start, len(log)):
                        if re.search(pattern, log[i]):
                            return i
                    if proc.poll() is not None or not cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise SystemExit(f"no {pattern!r} from mkdocs serve:\n{''.join(log[-30:])}")

        try:
            i = wait_for(r"Serving on http://", 0)
            base = re.search(r"Serving on (http://\S+?)/?$", log[i].strip()).group(1)
            print("first build:", log[wait_for(r"live run\(s\)", 0)].split("clusterlab: ", 1)[1].strip())
            page = project / "docs" / f"{args.page}.md"
            times = []
            for _ in range(args.edits):
                time.sleep(1.0)  # let the watcher settle
                mark = len(log)
                marker = f"An edited sentence {uuid.uuid4().hex}."
                started = time.monotonic()
                page.write_text(page.read_text() + f"\n{marker}\n")
                while True:
                    try:
                        with urllib.request.urlopen(f"{base}/{args.page}/", timeout=30) as response:
                            if marker in response.read().decode():
                                break
                    except urllib.error.HTTPError:
                        pass
                    if time.monotonic() - started > args.timeout:
                        raise SystemExit("the edit was never served")
                    time.sleep(0.02)
                times.append(time.monotonic() - started)
                ran = log[wait_for(r"live run\(s\)", mark)].split("clusterlab: ", 1)[1].strip()
                print(f"prose edit served in {times[-1]:.2f} s ({ran})")
            print(f"median {statistics.median(times):.2f} s over {len(times)} edit(s); load average "
                  f"{os.getloadavg()[0]:.1f}; part 5 {'through the run cache' if args.part5_cached else 'as it is'}")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
