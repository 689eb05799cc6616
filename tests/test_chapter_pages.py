"""Every chapter page (``book/chNN_*.md``): fast static checks of its source.

The pages are executed by the strict book build (``tests/test_book.py``); these checks catch, without
building, the ways a page and the package could drift apart: the equation numbers the docstrings cite
must be shown on the page, in order; the section numbers too; every included object must exist in the
package; the page must be in the table of contents and have the parts of a complete chapter
(``../shared/CHAPTER.md``).
"""
from __future__ import annotations

import ast
import re

import pytest

from nbharness import REPO

# chapter -> (page, graded notebook, number of numbered equations, number of numbered sections)
CHAPTERS = {
    1: ("ch01_math", "notebooks/ch01_math/math.ipynb", 13, 5),
    2: ("ch02_sampling", "notebooks/ch02_sampling/sampling.ipynb", 7, 7),
    3: ("ch03_unet", "notebooks/ch03_unet/unet.ipynb", 8, 7),
    4: ("ch04_latent", "notebooks/ch04_latent/latent.ipynb", 12, 9),
    5: ("ch05_guidance", "notebooks/ch05_guidance/guidance.ipynb", 7, 7),
    6: ("ch06_control", "notebooks/ch06_control/control.ipynb", 10, 7),
    7: ("ch07_flow", "notebooks/ch07_flow/flow.ipynb", 21, 10),
    8: ("ch08_video", "notebooks/ch08_video/video.ipynb", 13, 9),
}


def source(chapter: int) -> str:
    return (REPO / "book" / f"{CHAPTERS[chapter][0]}.md").read_text(encoding="utf-8")


def cited_equations() -> set[str]:
    """Every equation number the package's docstrings and comments cite ("eq. 3.2", "eqs. 3.4-3.6")."""
    cited = set()
    for path in (REPO / "diffcourse").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for a, b in re.findall(r"eqs?\. (\d+\.\d+)(?:\s*[-–]\s*(\d+\.\d+))?", text):
            cited.add(a)
            if b:
                major, lo, hi = a.split(".")[0], int(a.split(".")[1]), int(b.split(".")[1])
                cited.update(f"{major}.{k}" for k in range(lo, hi + 1))
    return cited


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_every_equation_is_numbered_on_the_page_in_order(chapter):
    n_eq = CHAPTERS[chapter][2]
    tags = re.findall(rf"\\tag\{{({chapter}\.\d+)\}}", source(chapter))
    want = [f"{chapter}.{k}" for k in range(1, n_eq + 1)]
    assert tags == want, (f"the page must number eqs. {want[0]}-{want[-1]} once each, in order, with "
                          f"\\tag{{{chapter}.k}} (the docstrings cite these numbers); found {tags}")


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_equations_cited_by_the_package_exist_on_the_page(chapter):
    cited = sorted(e for e in cited_equations() if e.split(".")[0] == str(chapter))
    shown = set(re.findall(rf"\\tag\{{({chapter}\.\d+)\}}", source(chapter)))
    missing = [e for e in cited if e not in shown]
    assert not missing, f"diffcourse cites eq(s). {missing}, which book/{CHAPTERS[chapter][0]}.md does not number"


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_sections_match_the_numbering_the_docstrings_cite(chapter):
    headings = re.findall(rf"^## ({chapter}\.\d+) ", source(chapter), flags=re.M)
    want = [f"{chapter}.{k}" for k in range(1, CHAPTERS[chapter][3] + 1)]
    assert headings == want, f"expected sections {want} in order; found {headings}"


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_included_code_exists_in_the_package(chapter):
    includes = re.findall(r"```\{literalinclude\} \.\./(\S+)\n:pyobject: ([\w.]+)", source(chapter))
    assert len(includes) >= 4, f"the page should show the package's real code next to the equations; found {includes}"
    for path, name in includes:
        scope = ast.parse((REPO / path).read_text(encoding="utf-8")).body
        for part in name.split("."):                     # "UNet.forward": a method of a class
            found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
            assert found, f"book/{CHAPTERS[chapter][0]}.md includes {name} from {path}, which does not define it"
            scope = found[0].body


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_page_has_the_parts_of_a_complete_chapter(chapter):
    page, notebook, _, _ = CHAPTERS[chapter]
    text = source(chapter)
    assert "## Learning objectives" in text or "**After this chapter you can**" in text, f"{page}: no learning objectives"
    for part in ("## Common traps", "## Self-check questions", notebook, "show_animation(", "zoo.load("):
        assert part in text, f"book/{page}.md is missing {part!r} (see ../shared/CHAPTER.md)"
    assert (REPO / notebook).exists(), f"the graded notebook {notebook} the page points to does not exist"
    assert "to_jshtml" not in text, "use diffcourse.animation.show: matplotlib's own player loads a CDN stylesheet"
    assert f"file: book/{page}" in (REPO / "_toc.yml").read_text(), f"book/{page} is not listed in _toc.yml"
    assert "PLACEHOLDER" not in text and "TODO" not in text, f"book/{page}.md has an unfinished part"


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_code_cells_seed_their_randomness(chapter):
    cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", source(chapter), flags=re.S)
    unseeded = [c.splitlines()[0] for c in cells
                if re.search(r"torch\.(randn|randint|rand)\(", c) and "generator=" not in c]
    assert not unseeded, f"cells draw random numbers without an explicit generator: {unseeded}"
