"""The built book in a headless browser, offline: widgets, the flipbook, math and the Colab links render.

Which book is opened:

* ``PROFIT_EDU_BOOK_HTML=<dir>`` (``make book-check`` sets it to ``_build/html``): that build;
* otherwise a strict build made here from the chapters executed by ``tests/notebooks/test_chapters.py``
  (executed now if that test did not run in this process), with execution switched off: about half a
  minute on top of the chapter runs, instead of executing every chapter a second time.

Chromium runs with no network features (``--disable-background-networking`` etc.) and loads the pages from
disk, so anything fetched from a CDN would be missing. Screenshots go to ``_build/screenshots/``.
The test skips, saying why, when no Chromium binary exists (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_tools"))
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import chapter_runner  # noqa: E402
import nbtool  # noqa: E402
import offline_book  # noqa: E402  (the build's own check: the same rule, applied here to the pages as built)

SCREENSHOTS = ROOT / "_build" / "screenshots"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


BROWSER = _browser()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason="no Chromium binary on PATH (install Debian's `chromium`)"),
]


@pytest.fixture(scope="session")
def book_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PROFIT_EDU_BOOK_HTML")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"PROFIT_EDU_BOOK_HTML={given} holds no built book (index.html); run `make book` first")
        return html
    if subprocess.run([sys.executable, str(ROOT / "book" / "_tools" / "fetch_offline_assets.py")],
                      capture_output=True).returncode != 0:
        pytest.skip("the offline widget/MathJax scripts could not be fetched (npm unavailable?): "
                    "run `python book/_tools/fetch_offline_assets.py` once with access to the npm registry")
    executed = {p.name: chapter_runner.execute_chapter(p).path for p in chapter_runner.chapters()}
    return chapter_runner.build_from_executed(tmp_path_factory.mktemp("book"), executed)


def _run(args: list[str], timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def dom(page: Path) -> str:
    """The page's DOM after its scripts ran (10 s of virtual time: widgets and MathJax render)."""
    return _run(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()])


def screenshot(page: Path, name: str, height: int = 4000) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / f"{name}.png"
    _run(["--virtual-time-budget=10000", f"--window-size=1280,{height}", f"--screenshot={out}", page.as_uri()])
    assert out.exists() and out.stat().st_size > 10_000, f"no screenshot written for {page}"
    return out


CHAPTERS = [p.stem for p in nbtool.chapters()]
ASSIGNMENTS = [f"assignments/{p.stem}" for p in sorted((ROOT / "book" / "assignments").glob("[0-9][0-9]_*.ipynb"))]


def _allowed_links() -> tuple[str, ...]:
    """Links a page may hold (a reader follows them; they load nothing): the repository, Colab, DOIs."""
    url, _ = nbtool.repository()
    return (url, "https://colab.research.google.com", offline_book.DOI_PREFIX)


@pytest.mark.parametrize("stem", CHAPTERS + ASSIGNMENTS)
def test_chapter_page_has_colab_link_and_no_external_url(book_html: Path, stem: str) -> None:
    page = book_html / "book" / f"{stem}.html"
    assert page.exists(), f"{page} was not built"
    raw = page.read_text()
    outside = offline_book.external_urls(raw, _allowed_links())
    assert not outside, f"{page.name} refers to external URLs: {outside[:5]}"
    url, release = nbtool.repository()
    colab = f"https://colab.research.google.com/github/{url.split('github.com/')[1]}/blob/{release}/book/{stem}.ipynb"
    rendered = dom(page)
    assert colab in rendered, f"{page.name} shows no Colab link to {colab} (the book's release)"
    screenshot(page, stem.replace("/", "-"))


def test_no_page_of_the_book_refers_outside(book_html: Path) -> None:
    """The whole site (index, references, search, genindex), not only the chapters."""
    found = {str(p.relative_to(book_html)): offline_book.external_urls(p.read_text(), _allowed_links())
             for p in sorted(book_html.rglob("*.html"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_widget_slider_renders_offline(book_html: Path) -> None:
    page = book_html / "book" / "03_learnable_quantizers.html"
    raw = page.read_text()
    assert "application/vnd.jupyter.widget-state+json" in raw, "the page embeds no widget state"
    assert "widget-slider" not in raw  # so the slider below was made by the html-manager, in the browser
    rendered = dom(page)
    assert re.search(r'class="[^"]*widget-slider', rendered), "the ipywidgets slider did not render"
    assert re.search(r'class="[^"]*widget-image', rendered), "the image under the slider did not render"
    assert "LinkModel" in raw, "the slider is not linked to the pictures in the browser (jslink)"


def test_flipbook_renders_without_a_kernel(book_html: Path) -> None:
    page = book_html / "book" / "02_uniform_quantization.html"
    rendered = dom(page)
    assert 'class="anim-slider"' in rendered, "the flipbook's slider is missing"
    assert re.search(r'<img id="_anim_img\w*"[^>]*src="data:image/png;base64,', rendered), "no flipbook frame"
    assert rendered.count("anim-buttons") >= 1
    buttons = re.search(r'<div class="anim-buttons">(.*?)</div>', page.read_text(), re.S)
    assert buttons and "<i class" not in buttons.group(1), "the flipbook's buttons still use icon fonts"
    screenshot(page, "02_uniform_quantization_full", height=9000)


def test_math_renders_offline(book_html: Path) -> None:
    rendered = dom(book_html / "book" / "02_uniform_quantization.html")
    assert "<mjx-container" in rendered, "MathJax (served by the book) did not typeset the formulas"


#: Appended to a copy of a page: after layout, every printed output, table and picture of the page must either fit
#: the text column or sit in a box that scrolls sideways and itself fits the column (what the book's stylesheet,
#: book/_ext/static/book_layout.css, provides). Anything else runs past the column and is cut. The offenders go
#: into an attribute of <body>.
LAYOUT_PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var article = document.querySelector("article.bd-article");
    var right = article.getBoundingClientRect().right;
    var cut = [];
    var items = article.querySelectorAll("div.cell_output pre, div.cell_output table, table, div.cell_output img");
    items.forEach(function (el) {
      var box = el;
      while (box !== article) {
        var overflow = getComputedStyle(box).overflowX;
        if (overflow === "auto" || overflow === "scroll") { break; }
        box = box.parentElement;
      }
      var edge = (box === article ? el : box).getBoundingClientRect().right;
      if (edge > right + 1) {
        cut.push(el.tagName + " " + Math.round(edge - right) + "px: " + (el.textContent || el.src).slice(0, 60));
      }
    });
    document.body.setAttribute("data-cut", JSON.stringify({items: items.length, cut: cut}));
  }, 3000);
});
</script>"""


@pytest.mark.parametrize("stem", CHAPTERS)
def test_wide_outputs_scroll_instead_of_being_cut(book_html: Path, stem: str) -> None:
    page = book_html / "book" / f"{stem}.html"
    probe = page.with_name(f"{stem}_layout_probe.html")  # beside the page, so its relative links still resolve
    probe.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    try:  # a narrow window (a laptop with the sidebar open, a tablet) is where wide outputs overflow
        rendered = _run(["--virtual-time-budget=8000", "--window-size=900,3000", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink()
    found = re.search(r'data-cut="([^"]*)"', rendered)
    assert found, "the probe did not run (the page's scripts failed?)"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["items"] > 0, f"{stem}: the probe found no outputs to check"
    assert seen["cut"] == [], f"{stem}: outputs run past the text column: {seen['cut'][:5]}"


#: Appended to a copy of a page: once the widgets have rendered, move the last slider one step with the keyboard
#: (as a reader would) and record the picture shown before and after (the size in bytes of the PNG behind it), in an
#: attribute of <body>. The stepper shows one picture at a time, so each moment has one visible picture.
PROBE = """<script>
window.addEventListener("load", function () {
  function pictures() {
    return Array.from(document.querySelectorAll(".widget-image")).filter(function (img) {
      return img.offsetParent !== null;
    });
  }
  function bytes(img) {
    return fetch(img.src).then(function (r) { return r.arrayBuffer(); }).then(function (b) { return b.byteLength; });
  }
  setTimeout(function () {
    var before = pictures();
    var handles = document.querySelectorAll(".noUi-handle");
    Promise.all(before.map(bytes)).then(function (beforeBytes) {
      var handle = handles[handles.length - 1];
      if (handle) {
        handle.focus();
        handle.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight", keyCode: 39, which: 39,
                                                           bubbles: true}));
      }
      setTimeout(function () {
        var after = pictures();
        Promise.all(after.map(bytes)).then(function (afterBytes) {
          document.body.setAttribute("data-probe", JSON.stringify({handles: handles.length, before: beforeBytes,
                                                                  after: afterBytes}));
        });
      }, 1500);
    });
  }, 6000);
});
</script>"""


def test_aiwq_explorer_fallback_frames_change_when_the_slider_moves(book_html: Path) -> None:
    page = book_html / "book" / "05_aiwq.html"
    raw = page.read_text()
    assert "application/vnd.jupyter.widget-state+json" in raw and "LinkModel" in raw, "no linked stepper state"
    probe = page.with_name("05_aiwq_probe.html")  # beside the page, so its relative links still resolve
    probe.write_text(raw.replace("</body>", PROBE + "</body>"))
    try:
        rendered = _run(["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink()
    found = re.search(r'data-probe="([^"]*)"', rendered)
    assert found, "the probe did not run (the page's scripts failed?)"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["handles"] >= 1, "the stepper's slider did not render"
    assert len(seen["before"]) == 1 and len(seen["after"]) == 1, f"one picture at a time expected: {seen}"
    assert seen["before"] != seen["after"], "moving the slider did not change the picture"
    screenshot(page, "05_aiwq_full", height=12000)
