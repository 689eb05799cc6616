"""The book builds with no warnings and no cell errors, and the built site needs no internet.

The first test builds the book exactly as `make book` does (same command, same output folder, so
the execution cache is shared and a re-run is quick); the others read the HTML it produced.
"""
from __future__ import annotations

import html.parser
import pathlib
import re
import shutil

import pytest

from conftest import BUILD_ARGS, ROOT, build_book as _build

pytestmark = pytest.mark.book


def test_makefile_builds_the_book_with_the_same_strict_flags():
    makefile = (ROOT / "Makefile").read_text()
    assert "jupyter-book " + " ".join(BUILD_ARGS) in makefile, (
        "`make book` and this test must build the book the same way; the Makefile's command changed")


class _Page(html.parser.HTMLParser):
    """Collects the resources a page asks the browser to fetch."""

    def __init__(self):
        super().__init__()
        self.fetches: list[tuple[str, str]] = []   # (tag, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.fetches.append((tag, a["src"]))
        if tag == "link" and a.get("href") and (a.get("rel") or "") in ("stylesheet", "preload", "icon"):
            self.fetches.append((tag, a["href"]))


def _pages(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.html") if "_static" not in p.parts and "_modules" not in p.parts)


def test_book_builds_without_warnings(built_book):
    assert (built_book / "index.html").exists(), "the build produced no index.html"
    assert (built_book / "book" / "intro.html").exists(), "the introduction page is missing from the build"


def test_no_page_fetches_anything_from_another_host(built_book):
    remote = []
    for page in _pages(built_book):
        parser = _Page()
        parser.feed(page.read_text(encoding="utf-8"))
        remote += [f"{page.relative_to(built_book)}: <{tag}> {url}" for tag, url in parser.fetches
                   if re.match(r"^(https?:)?//", url)]
    hint = ("\n(matplotlib's to_jshtml links a font CDN: show animations with diffcourse.animation.show(anim))"
            if any("font-awesome" in r for r in remote) else "")
    assert not remote, "pages load resources from the internet (the site must work offline):\n" + "\n".join(remote) + hint


def test_math_is_rendered_by_the_local_mathjax(built_book):
    mathjax = built_book / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.exists(), "MathJax is not shipped with the site; run `make book` (it unpacks it into book/_static)"
    fonts = list((built_book / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's fonts are missing from _static/mathjax; math would render without glyphs"
    math_pages = [p for p in _pages(built_book) if 'class="math' in p.read_text(encoding="utf-8")]
    assert math_pages, "no page of the built book contains math; the introduction should (eq. 1.2)"
    for page in math_pages:
        text = page.read_text(encoding="utf-8")
        assert "_static/mathjax/tex-chtml.js" in text, f"{page.name} has math but does not load the local MathJax"


def test_intro_executed_its_code(built_book):
    text = (built_book / "book" / "intro.html").read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', text), (
        "the introduction's figure is missing: its code cell did not execute or produced no image")
    assert "Traceback" not in text, "a cell on the introduction page raised"


def test_api_page_documents_every_public_module(built_book):
    import diffcourse  # noqa: F401  (the package must import for autodoc)

    api_source = (ROOT / "book" / "api.md").read_text()
    modules = sorted(
        "diffcourse." + ".".join(p.relative_to(ROOT / "diffcourse").with_suffix("").parts)
        for p in (ROOT / "diffcourse").rglob("*.py")
        if p.name != "__init__.py" and not p.name.startswith("_") and p.name != "__main__.py")
    missing = [m for m in modules if f"automodule:: {m}\n" not in api_source + "\n"]
    assert not missing, f"book/api.md does not document these modules: {missing}"
    html = (built_book / "book" / "api.html").read_text(encoding="utf-8")
    assert 'id="diffcourse.schedules.make_schedule"' in html, "autodoc produced no entry for make_schedule"


def test_a_warning_or_a_failing_cell_fails_the_build(tmp_path):
    """The strict build really is strict: a broken reference and a raising cell each fail it,
    while the same scratch book with a clean page builds (so the failures are the pages' fault)."""
    for name, body in {
        "clean": "# Clean\n\nNothing wrong here: $a^2 + b^2 = c^2$.\n",
        "broken_ref": "# Broken\n\nSee {ref}`a-label-that-does-not-exist`.\n",
        "raising_cell": ("---\njupytext:\n  text_representation:\n    format_name: myst\n"
                         "kernelspec:\n  name: python3\n  display_name: Python 3\n---\n# Raises\n\n"
                         "```{code-cell} ipython3\nraise RuntimeError('boom')\n```\n"),
    }.items():
        book = tmp_path / name
        book.mkdir()
        shutil.copy(ROOT / "_config.yml", book / "_config.yml")
        (book / "_toc.yml").write_text("format: jb-book\nroot: page\n")
        (book / "page.md").write_text(body)
        (book / "book" / "_static").mkdir(parents=True)
        shutil.copytree(ROOT / "book" / "_ext", book / "book" / "_ext")
        result = _build(book)
        if name == "clean":
            assert result.returncode == 0, f"a clean scratch book failed to build:\n{result.stdout[-3000:]}"
            continue
        assert result.returncode != 0, f"a book with a {name.replace('_', ' ')} built without failing:\n{result.stdout[-2000:]}"
