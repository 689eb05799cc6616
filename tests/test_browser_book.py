"""The built book, read in a real browser (Debian's Chromium driven by Playwright).

Every page of the site (found by walking ``_build/html``, so new chapters are covered as soon as
they are built) loads with no console errors and no request to a host other than 127.0.0.1; its
math is rendered by MathJax with no error and no raw ``$...$`` left; no Markdown is left as text
(table pipes, task-list brackets); no table or code block is wider than the text column (clipped,
scrolled sideways or sticking out); every image loads; every
matplotlib jshtml animation changes frame after pressing Play; a full-page screenshot of each page
(the top of pages taller than 60,000 px; none of the highlighted source pages under ``_modules``) is
kept under ``_build/screenshots/site/``. Previous/next links walk the table of contents in order,
and searching for a word of a chapter's title finds that chapter.

The same checks run on ``tests/broken_book/`` (one defect per page): each defect makes its check
fail and the clean page passes, so none of these checks can pass vacuously.
"""
from __future__ import annotations

import pathlib
import re
import shutil

import pytest

from browser import (animation_problems, animations, chromium, page_problems, screenshot_dir, serve,
                     site_pages, visit, watch)
from conftest import ROOT, build_book

pytestmark = [pytest.mark.book, pytest.mark.slow]   # ~2 minutes: every page, screenshots, a scratch build

BROKEN = pathlib.Path(__file__).parent / "broken_book"
VIEWPORT = {"width": 1280, "height": 900}
MAX_SHOT_HEIGHT = 60_000   # px; a full-page screenshot of the API page took 13 s alone and over 30 s under load


def inspect_site(browser, base: str, html_root: pathlib.Path, shots: pathlib.Path | None) -> dict:
    """Open every page of the site once; return {page: {check: [problems]}} plus counts of what was checked."""
    reports = {}
    for rel in site_pages(html_root):
        page = browser.new_page(viewport=VIEWPORT)
        record = watch(page)
        visit(page, base + rel)
        found = {"animations": len(animations(page)),
                 "math": page.evaluate("() => document.querySelectorAll('mjx-container').length"),
                 "images": page.evaluate("() => document.images.length")}
        anim = animation_problems(page)          # first, so errors while playing count as console errors
        problems = page_problems(page, record)
        problems["animations"] = anim
        if shots is not None and not rel.startswith("_modules/"):   # 90 highlighted source pages: checked, not shot
            out = shots / (rel[:-len(".html")] + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            tall = page.evaluate("() => document.documentElement.scrollHeight") > MAX_SHOT_HEIGHT
            page.screenshot(path=str(out), full_page=not tall)   # the API page is ~270,000 px: its top only
        reports[rel] = {"problems": problems, "found": found}
        page.close()
    return reports


def failures(reports: dict, check: str) -> str:
    return "\n".join(f"  {rel}: {p}" for rel, r in reports.items() for p in r["problems"][check])


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def site(built_book):
    with serve(built_book) as base:
        yield base


@pytest.fixture(scope="module")
def reports(built_book, site, browser):
    return inspect_site(browser, site, built_book, screenshot_dir(built_book, "site"))


# ----------------------------------------------------------------------------- every page

def test_every_page_of_the_site_is_checked(built_book, reports):
    pages = set(reports)
    for expected in ("book/intro.html", "book/api.html", "search.html"):
        assert expected in pages, f"{expected} was not found in {built_book}; found {sorted(pages)}"


@pytest.mark.parametrize("check", ["console errors", "requests to other hosts", "failed requests",
                                   "images that do not load", "math", "animations", "raw Markdown",
                                   "overflow"])
def test_every_page_passes(reports, check):
    found = failures(reports, check)
    where = {"console errors": "the browser console of that page (a theme/extension script, or a raw <script>)",
             "requests to other hosts": "the page's HTML: everything must be served from the site (no CDN)",
             "failed requests": "the files the page links to: a missing file under _build/html",
             "images that do not load": "the <img> src paths in the page",
             "math": "the page's TeX: MathJax errors, undefined macros, or $...$ not turned into math",
             "animations": "the jshtml animation: its frames must differ and Play must start it",
             "raw Markdown": "Markdown printed as text: a Markdown table needs its |---| row (and Markdown output "
                             "needs nb_render_markdown_format: myst); task lists need MyST's tasklist extension",
             "overflow": "the table or code block named: shorten its lines, or let it wrap (book/_static/course.css)"}[check]
    assert not found, f"{check} on pages of the built book (look at {where}):\n{found}"


def test_math_and_images_are_actually_present(reports):
    """The checks above are not vacuous: the introduction has rendered math and a figure."""
    intro = reports["book/intro.html"]["found"]
    assert intro["math"] >= 2, f"expected MathJax output on the introduction (eq. 1.2 and more); found {intro['math']}"
    assert intro["images"] >= 1, f"expected the introduction's figure to be checked; found {intro['images']} images"


def test_a_screenshot_of_every_page_is_kept(built_book, reports):
    shots = built_book.parent / "screenshots" / "site"
    pages = [rel for rel in reports if not rel.startswith("_modules/")]
    assert "book/ch07_flow.html" in pages and "index.html" in pages, pages
    missing = [rel for rel in pages if not (shots / (rel[:-len(".html")] + ".png")).exists()
               or not (shots / (rel[:-len(".html")] + ".png")).stat().st_size > 1000]
    assert not missing, f"no (or an empty) screenshot under {shots} for: {missing}"


# ----------------------------------------------------------------------------- navigation and search

def _sidebar(page) -> list[str]:
    """The pages of the table of contents in order, as the sidebar links them (absolute URLs)."""
    links = page.eval_on_selector_all("nav.bd-docs-nav a.reference.internal", "els => els.map(e => e.href)")
    return [page.url] + [u.split("#")[0] for u in links if u.split("#")[0] != page.url]


def _follow(page, selector: str) -> list[str]:
    """Click the ``selector`` link until there is none; the URLs visited, after the first."""
    visited = []
    while page.locator(selector).count():
        link = page.locator(selector).first
        title = link.locator(".prev-next-title").inner_text().strip()
        target = link.evaluate("a => a.href")
        link.click()
        page.wait_for_url(target)
        page.wait_for_load_state("load")
        heading = page.locator("main h1").first.inner_text()
        assert title in heading, (
            f"the {selector} link said {title!r} but led to {page.url} whose heading is {heading!r}")
        visited.append(page.url)
        assert len(visited) <= 200, f"{selector} links loop: {visited[-5:]}"
    return visited


def test_previous_and_next_walk_the_table_of_contents(browser, site):
    page = browser.new_page(viewport=VIEWPORT)
    record = watch(page)
    visit(page, site)                             # index.html redirects to the root page
    order = _sidebar(page)
    assert len(order) >= 4, f"the sidebar lists too few pages: {order}"
    forward = _follow(page, "a.right-next")
    assert [order[0]] + forward == order, (
        f"following 'next' from {order[0]} visited\n  {[order[0]] + forward}\n"
        f"but the table of contents (sidebar) is\n  {order}")
    backward = _follow(page, "a.left-prev")
    assert backward == order[-2::-1], (
        f"following 'previous' from {order[-1]} visited\n  {backward}\nexpected\n  {order[-2::-1]}")
    assert not record.console_errors and not record.remote_requests, (
        f"navigating raised console errors {record.console_errors} or requests {record.remote_requests}")
    page.close()


def _search(page, term: str) -> list[str]:
    """Search from a content page as a reader does (Ctrl+K, type, Enter); the result URLs once finished."""
    page.keyboard.press("Control+k")
    box = page.locator("#pst-search-dialog input[name=q]")
    box.wait_for(state="visible")
    box.fill(term)
    box.press("Enter")
    page.wait_for_url(re.compile(r"search\.html\?q="))
    summary = page.locator("#search-results p.search-summary")
    summary.filter(has_text=re.compile("Search finished|did not match")).wait_for()
    return [u.split("#")[0].split("?")[0] for u in
            page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.href)")]


def test_search_finds_every_page_by_a_word_of_its_title(browser, site):
    page = browser.new_page(viewport=VIEWPORT)
    visit(page, site)
    order = _sidebar(page)
    missed = []
    for url in order:
        visit(page, url)
        title = page.locator("main h1").first.inner_text()
        words = sorted(re.findall(r"[A-Za-z]{4,}", title), key=len, reverse=True)
        assert words, f"{url}: its heading {title!r} has no word to search for"
        results = _search(page, words[0])
        if url not in results:
            missed.append(f"{words[0]!r} (from the title of {url}) found {results}")
    assert not missed, "the search page does not find pages by the words of their titles:\n  " + "\n  ".join(missed)
    visit(page, order[0])
    assert _search(page, "qzxjvkw") == [], "a nonsense word should find nothing: the search lists everything"
    page.close()


# ----------------------------------------------------------------------------- the checks can fail

@pytest.fixture(scope="module")
def broken_site(tmp_path_factory, browser):
    """tests/broken_book built with the strict flags of `make book`, then checked like the real book."""
    book = tmp_path_factory.mktemp("broken_book")
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    (book / "book").mkdir()
    for shared in (ROOT / "book").glob("_*"):    # _static (MathJax) and any local extensions
        (book / "book" / shared.name).symlink_to(shared, target_is_directory=True)
    pages = sorted(p.stem for p in BROKEN.glob("*.md") if p.name != "README.md")
    for name in pages:
        shutil.copy(BROKEN / f"{name}.md", book / f"{name}.md")
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: clean\nchapters:\n" + "".join(f"  - file: {n}\n" for n in pages if n != "clean"))
    result = build_book(book)
    assert result.returncode == 0, (
        f"the scratch book {BROKEN} did not build (its defects are meant to survive the build):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    html = book / "_build" / "html"
    with serve(html) as base:
        yield inspect_site(browser, base, html, None)


BROKEN_PAGES = {   # page -> (the check its defect must fail, a phrase of the expected report)
    "bad_image": ("images that do not load", "no-such-figure.png"),
    "math_typo": ("math", "not rendered by MathJax"),
    "missing_argument": ("math", "MathJax error"),
    "undefined_macro": ("math", "undefined TeX macro \\alphabar"),
    "raw_dollars": ("math", "raw TeX left in the text"),
    "wide_equation": ("math", "display equation wider than the text column"),
    "cdn_script": ("requests to other hosts", "https://cdn.jsdelivr.net/"),
    "js_error": ("console errors", "notDefinedAnywhere"),
    "frozen_animation": ("animations", "did not change its frame"),
    "raw_table": ("raw Markdown", "raw table pipes in the text"),
    "raw_tasklist": ("raw Markdown", "literal task-list brackets"),
    "wide_table": ("overflow", "table "),     # "table wider than ..." or "table runs past ...": either overflows
    "wide_code": ("overflow", "pre wider than the text column"),
}


def test_a_clean_page_passes_every_check(broken_site):
    clean = broken_site["clean.html"]
    bad = {k: v for k, v in clean["problems"].items() if v}
    assert not bad, f"tests/broken_book/clean.md should pass every check; it failed: {bad}"
    assert clean["found"]["animations"] == 1 and clean["found"]["math"] >= 2 and clean["found"]["images"] >= 2, (
        f"the clean page should have been checked with 1 animation, 2 formulas and 2 images; found {clean['found']}")


@pytest.mark.parametrize("name", sorted(BROKEN_PAGES))
def test_a_broken_page_fails_its_check(broken_site, name):
    check, phrase = BROKEN_PAGES[name]
    problems = broken_site[f"{name}.html"]["problems"]
    assert any(phrase in p for p in problems[check]), (
        f"tests/broken_book/{name}.md has a defect that the '{check}' check should report "
        f"(with {phrase!r}), but it reported {problems[check]}; all its results: {problems}")


def test_every_broken_page_is_tested():
    pages = {p.stem for p in BROKEN.glob("*.md")} - {"README", "clean"}
    assert pages == set(BROKEN_PAGES), f"pages in {BROKEN} without an expected failure: {pages ^ set(BROKEN_PAGES)}"
