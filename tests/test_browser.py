"""The pages people read, opened in a real browser: Debian's chromium, headless, driven by
playwright (never a browser of playwright's own), at a laptop's 1280x900 and a phone's 390x844
(a mobile viewport: the page's viewport meta tag decides its layout width, as on a phone).

Pages: the report of the committed example, a ``--compare`` report of two small saved results
that differ in their dispatch design, the docs site's home page and its widest table (the
record schema). On each: nothing overflows
the page sideways, every image decodes, the text is a readable size; the compare report's
headline says what differs. Screenshots go to $COMLAB_SCREENSHOTS when it is set (to look at).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comlab.lab import report
from test_compare import TIGHT
from test_report import saved_with

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "results" / "example"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZES = {"laptop": dict(viewport={"width": 1280, "height": 900}),
         "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                       device_scale_factor=2)}
MIN_FONT_PX = 12  # the smallest text a phone reader should meet (body text is 14-16 px)

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)

MEASURE = r"""() => {
  const wrapped = e => {  // the cell's text (its padding aside) takes more than one line
    const r = document.createRange(); r.selectNodeContents(e);
    return r.getBoundingClientRect().height > 2.2 * parseFloat(getComputedStyle(e).fontSize);
  };
  const texts = [...document.querySelectorAll('p, li, td, th, figcaption, h1, h2, code')]
    .filter(e => e.offsetParent !== null && e.textContent.trim());
  return {
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    images: document.images.length,
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                                .map(i => i.alt || i.src.slice(0, 60)),
    viewport: !!document.querySelector('meta[name=viewport]'),
    smallest: Math.min(...texts.map(e => parseFloat(getComputedStyle(e).fontSize))),
    text: document.body.innerText,
    // table cells of one word wrapped onto several lines: a table squeezed to the screen
    squeezed: [...document.querySelectorAll('.scroll td, th, .md-typeset table td')]
      .filter(e => !/\s/.test(e.textContent.trim()) && e.textContent.trim().length > 1
              && wrapped(e))
      .map(e => e.textContent.trim()).slice(0, 5),
  };
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    """name -> a file to open: the example's report, a compare report, the docs' home page."""
    out = tmp_path_factory.mktemp("pages")
    found = {"report": report.write_report(EXAMPLE, out=out / "example.html")}
    a = saved_with(out, "a", {1: TIGHT, 4: TIGHT}, dispatch="broker")
    b = saved_with(out, "b", {1: [1.3 * m for m in TIGHT], 4: TIGHT}, dispatch="broker:0")
    found["compare"] = report.write_report(b, compare=a, out=out / "compare.html")
    if importlib.util.find_spec("mkdocs") and importlib.util.find_spec("material"):
        build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f",
                                str(ROOT / "mkdocs.yml"), "-d", str(out / "site")],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert build.returncode == 0, build.stderr
        found["docs"] = out / "site" / "index.html"
        found["docs-schema"] = out / "site" / "reference" / "schema" / "index.html"  # wide
    return found


def open_page(browser, path: Path, size: str, shot: str):
    context = browser.new_context(**SIZES[size])
    try:
        page = context.new_page()
        page.goto(path.as_uri(), wait_until="load", timeout=60_000)
        found = page.evaluate(MEASURE)
        where = os.environ.get("COMLAB_SCREENSHOTS")
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(where) / f"{shot}-{size}.png"), full_page=True)
        return found
    finally:
        context.close()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["report", "compare", "docs", "docs-schema"])
def test_the_page_fits_and_reads_in_a_real_browser(browser, pages, name, size):
    if name not in pages:
        pytest.skip("docs packages not installed (pip install -e '.[docs]')")
    m = open_page(browser, pages[name], size, name)
    width = SIZES[size]["viewport"]["width"]
    assert m["viewport"], "no <meta name=viewport>: a phone lays the page out 980 px wide"
    assert m["innerWidth"] == width  # a phone honoured the viewport: device width, not 980
    assert m["scrollWidth"] <= m["innerWidth"], f"the page overflows sideways: {m['scrollWidth']}"
    assert not m["broken"], f"images not decoded: {m['broken']}"
    assert m["images"] > 0 or name == "docs-schema"
    assert m["smallest"] >= MIN_FONT_PX, f"text at {m['smallest']} px"
    assert not m["squeezed"], f"table cells broken inside a word: {m['squeezed']}"
    if name == "compare":
        first = m["text"][:m["text"].index("Summary per configuration")]
        assert "What differs, a (a) -> b (b): dispatch: broker -> broker:0" in first
        assert "slower" in first  # the verdicts come before the summary


def test_a_page_without_a_viewport_is_caught(browser, tmp_path):
    """The check itself: the report before its viewport tag overflowed a phone's width."""
    page = report.write_report(EXAMPLE, out=tmp_path / "r.html")
    text = page.read_text().replace(
        "<meta name='viewport' content='width=device-width, initial-scale=1'>", "")
    page.write_text(text + "<div style='width:700px'>wide</div>")
    m = open_page(browser, page, "phone", "no-viewport")
    assert not m["viewport"] and m["innerWidth"] != 390
