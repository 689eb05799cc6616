"""Helpers for the browser tests: Debian's Chromium driven by Playwright, a local static server,
and the checks a reader's browser makes on every page of the built book.

- ``chromium()``: a context manager giving a Playwright ``Browser`` on ``/usr/bin/chromium``
  (Playwright never downloads a browser of its own here; a fresh user-data-dir per launch).
- ``serve(folder)``: a ``http.server`` thread on a free loopback port; yields the base URL.
- ``visit(page_factory, url)`` and ``page_problems(...)``: load one page and list what a reader
  would see broken (console errors, requests to other hosts, images that do not load, math that
  MathJax did not render or reported as an error, raw ``$...$`` left in the text, Markdown left as
  text (table pipes, task-list brackets), tables and code blocks wider than the text column).
- ``animation_problems(page)``: press play on every matplotlib jshtml animation and require its
  frame to change.

Every wait is on a condition (``wait_for_function`` / ``expect``-style polling with a deadline),
never a fixed sleep. The checks return lists of problems instead of asserting, so the tests can
prove they fail on deliberately broken pages (``tests/broken_book/``).
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import pathlib
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 20_000          # the longest any single condition may take to come true
ANIMATION_TIMEOUT_MS = 5_000  # a playing jshtml animation shows its next frame within ~1/fps s


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chromium():
    """Yield a headless Playwright ``Browser`` running Debian's ``/usr/bin/chromium``."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium; install it with "
        "`apt-get install -y chromium` (the `sysdeps` step of `make test` does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # keep pytest's output readable
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):   # the browser closing a connection early
        pass


@contextlib.contextmanager
def serve(folder: pathlib.Path):
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def site_pages(html_root: pathlib.Path) -> list[str]:
    """Every HTML page of a built site, as paths relative to ``html_root`` (posix), sorted.

    Walks the files rather than the table of contents, so new chapters, the index, the search
    page and the highlighted source pages are all covered as soon as they exist.
    """
    return sorted(p.relative_to(html_root).as_posix() for p in html_root.rglob("*.html")
                  if not {"_static", "_sources", "_images"} & set(p.relative_to(html_root).parts))


def screenshot_dir(html_root: pathlib.Path, name: str) -> pathlib.Path:
    """``_build/screenshots/<name>`` next to ``_build/html`` (a test artifact), created empty."""
    folder = html_root.parent / "screenshots" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@dataclass
class Visit:
    """What happened while one page was open."""
    console_errors: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)


def _is_local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in LOCAL_HOSTS


def watch(page) -> Visit:
    """Record console errors, uncaught exceptions, failed requests and requests to other hosts.

    Requests to other hosts are aborted (the suite runs offline) and recorded; they are failures.
    """
    record = Visit()

    def on_route(route):
        if _is_local(route.request.url):
            route.continue_()
        else:
            record.remote_requests.append(route.request.url)
            route.abort()

    def on_response(response):
        if response.status >= 400:
            record.failed_requests.append(f"HTTP {response.status} {response.url}")

    def on_failed(request):
        if _is_local(request.url):
            record.failed_requests.append(f"{request.failure} {request.url}")

    page.route("**/*", on_route)
    page.on("console", lambda m: m.type == "error" and record.console_errors.append(
        f"console.error: {m.text} ({m.location.get('url', '')}:{m.location.get('lineNumber', '')})"))
    page.on("pageerror", lambda e: record.console_errors.append(f"uncaught exception: {e}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    return record


# JavaScript run in the page once it has loaded (kept here so the checks read in one place).
_IMAGES_SETTLED = """() => Array.from(document.images).every(img => img.complete)"""
_BROKEN_IMAGES = """() => Array.from(document.images)
    .filter(img => !(img.complete && img.naturalWidth > 0))
    .map(img => img.getAttribute('src') || '(no src)')"""
_MATH_COUNT = """() => document.querySelectorAll('.math, span.math, div.math').length"""
_MATHJAX_READY = """() => window.MathJax !== undefined && MathJax.startup !== undefined
    && MathJax.startup.promise !== undefined"""
_MATHJAX_DONE = """() => MathJax.startup.promise.then(() => true)"""
_MATH_PROBLEMS = r"""() => {
  const problems = [];
  for (const el of document.querySelectorAll('span.math, div.math')) {
    const tex = (el.getAttribute('data-tex') || el.textContent).trim().slice(0, 80);
    const box = el.querySelector('mjx-container');
    if (!box) problems.push('not rendered by MathJax: ' + tex);
    // A display equation wider than the text column is cut off and has to be scrolled sideways:
    // break it over lines (aligned) instead.
    else if (el.tagName === 'DIV' && box.scrollWidth > el.clientWidth + 2)
      problems.push('display equation wider than the text column (' + box.scrollWidth + ' px > '
                    + el.clientWidth + ' px): ' + tex);
  }
  // MathJax's own parse trees: an merror node is a TeX error (e.g. a missing brace); the noundefined
  // extension turns an undefined macro into an mtext holding its name (drawn in red, no merror).
  // (CHTML draws glyphs with CSS, so the DOM's textContent cannot be read for this.)
  const doc = window.MathJax?.startup?.document;
  for (const item of (doc && doc.math) ? doc.math : []) {
    if (!item.root) continue;
    const where = ' in "' + String(item.math).trim().slice(0, 80) + '"';
    item.root.walkTree(node => {
      if (node.isKind('merror')) {
        problems.push('MathJax error "' + (node.attributes.get('data-mjx-error') || 'merror') + '"' + where);
      } else if (node.isKind('mtext')) {
        const text = node.childNodes.map(c => c.getText ? c.getText() : '').join('');
        if (text.startsWith('\\')) problems.push('undefined TeX macro ' + text + where);
      }
    });
  }
  // Math delimiters left in the prose: dollar math that was never turned into math nodes.
  const main = document.querySelector('main') || document.body;
  const prose = main.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .math, .highlight, .animation, textarea')
       .forEach(n => n.remove());
  const raw = prose.textContent.match(/\$\$[^$]+\$\$|\$[^$\s][^$\n]*\$|\\\(|\\\[/g) || [];
  for (const r of raw) problems.push('raw TeX left in the text: ' + r.slice(0, 80));
  return problems;
}"""


# What a reader sees in the text column: Markdown that was not rendered, and blocks that do not fit.
_LAYOUT_PROBLEMS = r"""() => {
  const found = {markdown: [], overflow: []};
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  // 1. Markdown left as text: a table printed as pipes (a Markdown output cell rendered as plain text, or a
  //    table without its |---| row) and task-list brackets that were not turned into check boxes.
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .math, .highlight, .animation, textarea')
       .forEach(n => n.remove());
  for (const line of prose.textContent.split('\n')) {
    const text = line.trim();
    if (/^\|.*\|$/.test(text) && text.split('|').length >= 3)
      found.markdown.push('raw table pipes in the text: ' + text.slice(0, 80));
    else if (/\|\s*:?-{3,}:?\s*\|/.test(text))
      found.markdown.push('raw table separator in the text: ' + text.slice(0, 80));
  }
  const brackets = prose.textContent.match(/(^|[\s(])\[[ xX]\](?=\s)[^\n]{0,60}/g) || [];
  for (const b of brackets) found.markdown.push('literal task-list brackets: ' + b.trim());
  // 2. Tables and code blocks wider than the text column: cut off (clipped, or behind a sideways
  //    scrollbar) or sticking out past the column's right edge.
  const right = article.getBoundingClientRect().right;
  const blocks = article.querySelectorAll(
    'table, pre, div.highlight, div.cell_output, div.output, .pst-scrollable-table-container');
  for (const el of blocks) {
    if (!el.clientWidth || el.closest('.animation, div.math, mjx-container')) continue;
    const name = el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).split(' ')[0] : '');
    const what = (el.innerText || el.textContent || '').trim().split('\n')[0].slice(0, 60);
    if (el.scrollWidth > el.clientWidth + 2)
      found.overflow.push(name + ' wider than the text column (' + el.scrollWidth + ' px of content in '
                          + el.clientWidth + ' px, the rest clipped or scrolled): ' + what);
    else if (el.getBoundingClientRect().right > right + 2)
      found.overflow.push(name + ' runs past the text column (right edge ' + Math.round(el.getBoundingClientRect().right)
                          + ' px > ' + Math.round(right) + ' px): ' + what);
  }
  return found;
}"""


def visit(page, url: str) -> None:
    """Load ``url`` and wait until it has settled: DOM loaded, images done, MathJax finished."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_MS / 1000) as r:   # local server: instant
        redirect = b'http-equiv="Refresh"' in r.read()                    # the site's index.html
    response = page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
    assert response is not None and response.ok, f"{url} answered {response and response.status}"
    if redirect:
        page.wait_for_url(lambda u: u != url, timeout=TIMEOUT_MS)
        page.wait_for_load_state("load", timeout=TIMEOUT_MS)
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    page.wait_for_function(_IMAGES_SETTLED, timeout=TIMEOUT_MS)
    if page.evaluate(_MATH_COUNT) and page.evaluate(_MATHJAX_READY):
        page.evaluate(_MATHJAX_DONE)


def page_problems(page, record: Visit) -> dict[str, list[str]]:
    """What a reader would see broken on the loaded page, by kind (empty lists: all good)."""
    math = []
    if page.evaluate(_MATH_COUNT):
        if not page.evaluate(_MATHJAX_READY):
            math.append("the page has math but MathJax did not load")
        else:
            math = page.evaluate(_MATH_PROBLEMS)
    else:   # no math nodes at all: raw dollars would still be a failure
        math = [p for p in page.evaluate(_MATH_PROBLEMS) if p.startswith("raw TeX")]
    layout = page.evaluate(_LAYOUT_PROBLEMS)
    return {
        "console errors": list(record.console_errors),
        "requests to other hosts": list(record.remote_requests),
        "images that do not load": page.evaluate(_BROKEN_IMAGES),
        "failed requests": list(record.failed_requests),
        "math": math,
        "raw Markdown": layout["markdown"],
        "overflow": layout["overflow"],
    }


_ANIMATIONS = """() => Array.from(document.querySelectorAll('div.animation')).map((div, i) => {
  const img = div.querySelector('img[id^="_anim_img"]');
  return {index: i, id: img ? img.id : null, src: img ? img.src : null,
          play: !!div.querySelector('button[title="Play"]')};
})"""
_FRAME_CHANGED = """([id, before]) => {
  const img = document.getElementById(id);
  return img !== null && img.src !== before && img.complete && img.naturalWidth > 0;
}"""


def animations(page) -> list[dict]:
    """The matplotlib jshtml animations on the page (``to_jshtml()`` output)."""
    return page.evaluate(_ANIMATIONS)


def animation_problems(page) -> list[str]:
    """Press play on every jshtml animation; each must show a different frame within a few seconds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    problems = []
    for anim in animations(page):
        if not (anim["id"] and anim["play"]):
            problems.append(f"animation #{anim['index']} has no frame image or no Play button")
            continue
        page.locator(f'#{anim["id"]}').scroll_into_view_if_needed()
        page.locator("div.animation").nth(anim["index"]).locator('button[title="Play"]').click()
        try:
            page.wait_for_function(_FRAME_CHANGED, arg=[anim["id"], anim["src"]],
                                   timeout=ANIMATION_TIMEOUT_MS)
        except PlaywrightTimeout:
            problems.append(f"animation #{anim['index']} ({anim['id']}): pressing Play did not change "
                            f"its frame within {ANIMATION_TIMEOUT_MS} ms")
        page.locator("div.animation").nth(anim["index"]).locator('button[title="Pause"]').click()
    return problems
