"""Part 5's memory calculator and the ZeRO notebook, in a real browser (Debian's Chromium via Playwright).

The calculator is JavaScript (docs/javascripts/zero-calculator.js); its reference is
the command line: for each case the test types the inputs into the built page, reads
the cells, runs ``clusterlab zero estimate`` with the same inputs, and compares the
printed strings (the paper's per-device GB and DeepSpeed's estimator row).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from helpers import clusterlab, needs_docs
from test_site import strict_build

needs_docs()

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium: run `apt-get install chromium` to enable "
                "the browser test", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

# params, nodes, GPUs per node, stage, offload, largest layer, zero.Init
CASES = [
    ("7.5B", "8", "8", "3", "none", "0.5B", True),  # the page's defaults
    ("7.5B", "1", "4", "2", "none", "1M", True),  # Table 1: 41.3, rounded half up
    ("1T", "8", "8", "1", "optimizer", "1M", True),  # Table 1: 4187.5
    ("2851M", "1", "8", "2", "optimizer", "1M", True),  # DeepSpeed's documented ZeRO-2 sample
    ("2851M", "1", "8", "3", "params", "32M", False),  # ... and ZeRO-3, zero_init=0
    ("2851M", "2", "8", "3", "optimizer", "32M", True),
    ("123456789", "3", "5", "0", "none", "1M", True),
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    build = strict_build()
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{build.log[-4000:]}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(build.site)))
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


@pytest.fixture(scope="module")
def page(base_url, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/part5-deepspeed/")
    page.wait_for_selector("form.zero-calculator[data-ready='1']", timeout=30_000)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def _cli(params, nodes, gpus, stage, largest) -> tuple[list[str], list[str]]:
    """The paper row's four cells for ``stage`` and DeepSpeed's estimator rows, as the CLI prints them."""
    r = clusterlab("zero", "estimate", "--params", params, "--nodes", nodes, "--gpus-per-node", gpus,
                   "--stage", stage, "--largest-layer-params", largest)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith(f"{stage}     "))
    return row.split()[-4:], [line for line in lines if "GB |" in line]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}-stage{c[3]}-{c[4]}" for c in CASES])
def test_calculator_agrees_with_the_cli(page, case):
    params, nodes, gpus, stage, offload, largest, zero_init = case
    form = page.locator("form.zero-calculator")
    form.locator("[name=params]").fill(params)
    form.locator("[name=nodes]").fill(nodes)
    form.locator("[name=gpus]").fill(gpus)
    form.locator("[name=stage]").select_option(stage)
    form.locator("[name=offload]").select_option(offload)
    if stage == "3":
        form.locator("[name=largest]").fill(largest)
    form.locator("[name=zero_init]").set_checked(zero_init)
    form.locator("[name=memory]").fill("80")
    out = {k: form.locator(f"[data-out={k}]").inner_text() for k in ("params", "grads", "optim", "total", "ds", "error")}
    assert out["error"] == ""
    paper_row, ds_rows = _cli(params, nodes, gpus, stage, largest)
    assert [out["params"], out["grads"], out["optim"], out["total"]] == paper_row
    if stage == "0":
        assert "no estimator for stage 0" in out["ds"]
        return
    device = {"none": "none", "optimizer": "cpu ", "params": "cpu "}
    if stage == "3":
        options = (f"offload_param={device['params'] if offload == 'params' else 'none'}, "
                   f"offload_optimizer={device[offload]}, zero_init={1 if zero_init else 0}")
    else:
        options = f"offload_optimizer={device[offload]}"
    wanted = [line for line in ds_rows if line.endswith(options)]
    assert wanted, (options, ds_rows)
    assert out["ds"] == wanted[0]  # same bytes, same rounding, same spacing


def test_calculator_reports_a_bad_input_in_one_line(page):
    form = page.locator("form.zero-calculator")
    form.locator("[name=params]").fill("seven")
    error = form.locator("[data-out=error]").inner_text()
    assert error == 'params="seven" is not a count; write it like 7.5e9, 7.5B, 2851M or 1T'
    form.locator("[name=params]").fill("7.5B")
    assert form.locator("[data-out=error]").inner_text() == ""


def test_notebook_code_cells_are_folded(base_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base_url}/notebooks/zero_memory/")
    page.wait_for_selector("details.nb-code", timeout=30_000)
    cells = page.locator(".jupyter-wrapper .jp-CodeCell:not(.jp-CodeCell .jp-CodeCell)").count()  # mkdocs-jupyter nests two
    folded = page.locator("details.nb-code:not([open])").count()
    images = page.locator(".jupyter-wrapper .jp-OutputArea-output img")
    widths = [images.nth(i).bounding_box()["width"] for i in range(images.count())]
    page.close()
    assert cells >= 3 and folded == cells
    # one plot per row, drawn at (nearly) the page's width: none squeezed into a third of it
    assert len(widths) == 5 and min(widths) > 500, widths
