"""The built site in a real browser: Debian's Chromium, driven by Playwright.

The site from test_site.py's strict build is served on 127.0.0.1 by a threaded
``http.server`` in this process; headless Chromium visits every lab page, and
screenshots go to ``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from helpers import needs_docs
from test_site import LAB_PAGES, ROOT, strict_build

needs_docs()

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium: run `apt-get install chromium` to enable "
                "the browser test", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    build = strict_build()
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{build.log[-4000:]}")
    handler = functools.partial(_Quiet, directory=str(build.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# A log line each lab page must show (real-cluster runs 2 nodes x 2 processes).
EXPECTED_LINE = dict.fromkeys(LAB_PAGES, "[node1 rank5 local1]") | {"real-cluster": "[node1 rank3 local1]"}


@pytest.mark.parametrize("name", LAB_PAGES)
def test_lab_page_shows_rank_logs(page, base_url, name):
    page.goto(f"{base_url}/{name}/")
    log = page.locator("pre code", has_text=EXPECTED_LINE[name]).first
    log.scroll_into_view_if_needed()
    assert log.is_visible()
    shot(page, name)


def test_home_page(page, base_url):
    page.goto(f"{base_url}/")
    assert "Multi-node distributed training, on one machine" in page.locator("h1").first.inner_text()
    # Material renders the diagram with the Mermaid served by the site, into a shadow root.
    page.wait_for_function("document.querySelector('div.mermaid') !== null", timeout=15_000)
    assert page.locator("div.mermaid").bounding_box()["height"] > 200
    shot(page, "home")


def test_search_finds_barrier(page, base_url):
    page.goto(f"{base_url}/")
    search = page.locator("input.md-search__input")
    search.click()
    search.press_sequentially("barrier", delay=30)  # Material searches as you type
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible", timeout=15_000)
    assert "barrier" in results.first.inner_text().lower()
    shot(page, "search-barrier")


def test_dark_mode_toggle_changes_the_palette(page, base_url):
    page.goto(f"{base_url}/part3-barriers/")
    scheme = "document.body.getAttribute('data-md-color-scheme')"
    background = "getComputedStyle(document.body).backgroundColor"
    before = page.evaluate(scheme), page.evaluate(background)
    page.get_by_title("Switch to dark mode").click()
    page.wait_for_function(f"{scheme} === 'slate'", timeout=10_000)
    after = page.evaluate(scheme), page.evaluate(background)
    assert before[0] == "default" and after[0] == "slate"
    assert after[1] != before[1]
    shot(page, "part3-barriers-dark")


def test_code_copy_button_copies_the_log(page, base_url):
    page.goto(f"{base_url}/part2-two-nodes/")
    block = page.locator("div.highlight", has=page.locator("code", has_text="$ clusterlab simulate")).first
    block.scroll_into_view_if_needed()
    block.hover()
    block.locator("button[data-md-type='copy']").click()  # Material 9.7+: the copy button in the code nav
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "$ clusterlab simulate" in copied
    def lines(text: str) -> list[str]:  # innerText adds blank lines between Material's line spans
        return [line for line in text.splitlines() if line.strip()]

    assert lines(copied) == lines(block.locator("code").inner_text())


def test_an_exercise_folds_its_hint_and_solution_until_asked(page, base_url):
    page.goto(f"{base_url}/part3-barriers/")
    exercise = page.locator("div.admonition.exercise").first
    exercise.scroll_into_view_if_needed()
    assert exercise.locator(".admonition-title").inner_text().startswith("Exercise: ")
    assert "clusterlab exercise check barrier-checkpoint" in exercise.inner_text()
    solution = exercise.locator("details.success")
    assert solution.get_attribute("open") is None  # folded: the reader tries first
    assert not solution.locator("code", has_text="clusterlab.barrier(").first.is_visible()
    solution.locator("summary").click()
    solution.locator("code", has_text="clusterlab.barrier(").first.wait_for(state="visible", timeout=10_000)
    assert "PASSED" in solution.inner_text()
    shot(page, "part3-exercise-solution")


def test_the_lab_navigation_runs_through_debugging_before_the_real_cluster(page, base_url):
    page.goto(f"{base_url}/failures/")
    # Material's "next page" link in the footer
    following = page.locator("a.md-footer__link--next")
    assert "Debugging a multi-node job" in following.inner_text()
    following.click()
    page.wait_for_url(f"{base_url}/debugging/", timeout=10_000)
    assert "From the lab to a real cluster" in page.locator("a.md-footer__link--next").inner_text()
