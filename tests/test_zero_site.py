"""Part 5 on the built site: its pictures, its calculator, its live trap; and the notebook's links.

Every link in a rendered notebook must resolve (``mkdocs build --strict`` does not check them).

mkdocs-jupyter renders ``docs/notebooks/NAME.ipynb`` as ``site/notebooks/NAME/index.html``
and copies the notebook's links as written, so a link that is right for the file
(``../part5-deepspeed.md``) is wrong for the page. This test resolves each relative
``href`` and ``src`` of every notebook page against the page's own URL in the built site.
"""

from __future__ import annotations

import html.parser
import posixpath
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from helpers import needs_docs
from test_site import ROOT, built  # noqa: F401 - the session's one strict build

needs_docs()

pytestmark = pytest.mark.timeout(600)

NOTEBOOKS = sorted(p.stem for p in (ROOT / "docs" / "notebooks").glob("*.ipynb"))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self._in_article = 0

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self._in_article += 1
        if self._in_article:
            self.links += [v for k, v in attrs if k in ("href", "src") and v]

    def handle_endtag(self, tag):
        if tag == "article":
            self._in_article -= 1


def _target(site: Path, page_dir: str, link: str) -> Path | None:
    """The file a relative link of the page at ``page_dir`` names, or None for external and in-page links."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or not parts.path or link.startswith("data:"):
        return None
    path = posixpath.normpath(posixpath.join(page_dir, unquote(parts.path)))
    target = site / path.lstrip("/")
    return target / "index.html" if link.split("#")[0].endswith("/") or target.is_dir() else target


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_links_resolve(built, name):  # noqa: F811 - the fixture imported above
    page_dir = f"/notebooks/{name}/"
    parser = _Links()
    parser.feed(built.page(f"notebooks/{name}"))
    targets = [(link, _target(built.site, page_dir, link)) for link in parser.links]
    checked = [(link, t) for link, t in targets if t is not None]
    broken = [link for link, t in checked if not t.exists()]
    assert checked, "the notebook page has no relative links at all: is this the right page?"
    assert broken == [], f"links in notebooks/{name}.ipynb that lead nowhere on the built site: {broken}"


def test_part5_shows_the_sharding_picture_the_timeline_and_the_calculator(built):  # noqa: F811
    page, text = built.page("part5-deepspeed"), built.text("part5-deepspeed")
    assert "What each of the 8 ranks holds between steps" in page
    assert "One ZeRO-3 step of this build's run" in page
    # the timeline's order on rank 0, printed from the trace
    assert ("all-gather L0 (forward) \u2192 all-gather L1 (forward) \u2192 all-gather L1 (backward) \u2192 "
            "reduce-scatter L1 (backward) \u2192 all-gather L0 (backward) \u2192 reduce-scatter L0 (backward)") in text
    assert 'class="zero-calculator"' in page and "data-table1=" in page
    # the LOCAL_RANK trap, live
    assert "rank 3 is process 0 on worker-1: LOCAL_RANK = 3 % 2 = 1" in text
    # logs folded: the excerpt shows rank 3 and 4, the whole log sits in a collapsed block
    assert text.count("The whole output (") == 3
    # no scratch path is displayed: the report is written as ./report.json in the command shown
    assert "--report report.json" in text and "/tmp/" not in text and tempfile.gettempdir() not in text
    assert "tenfold" not in text and "About the same bytes" not in text
