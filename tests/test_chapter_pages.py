"""Chapter 1's page (``book/ch01_math.md``): fast static checks of its source.

The page is executed by the strict book build (``tests/test_book.py``); these checks catch, without
building, the ways the page and the package could drift apart: equation numbers the docstrings cite
(eqs. 1.1-1.13) must be shown on the page, every included object must exist in the package, and the
page must be in the table of contents.
"""
from __future__ import annotations

import ast
import re

from nbharness import REPO

PAGE = REPO / "book" / "ch01_math.md"
SOURCE = PAGE.read_text(encoding="utf-8")


def test_every_equation_of_chapter_1_is_numbered_on_the_page_in_order():
    tags = re.findall(r"\\tag\{(1\.\d+)\}", SOURCE)
    want = [f"1.{k}" for k in range(1, 14)]
    assert tags == want, (f"the page must number eqs. 1.1-1.13 once each, in order, with \\tag{{1.k}} "
                          f"(the docstrings cite these numbers); found {tags}")


def test_sections_match_the_numbering_the_docstrings_cite():
    headings = re.findall(r"^## (1\.\d) ", SOURCE, flags=re.M)
    assert headings == ["1.1", "1.2", "1.3", "1.4", "1.5"], f"expected sections 1.1-1.5 in order; found {headings}"


def test_included_code_exists_in_the_package():
    includes = re.findall(r"```\{literalinclude\} \.\./(\S+)\n:pyobject: (\w+)", SOURCE)
    assert len(includes) >= 5, f"the page should show the package's real code next to the equations; found {includes}"
    for path, name in includes:
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert name in defined, f"book/ch01_math.md includes {name} from {path}, which does not define it"


def test_page_has_the_parts_of_a_complete_chapter():
    for part in ("## Learning objectives", "## Common traps", "## Self-check questions",
                 "notebooks/ch01_math/math.ipynb", "show_animation(", "zoo.load("):
        assert part in SOURCE, f"book/ch01_math.md is missing {part!r} (see ../shared/CHAPTER.md)"
    assert "to_jshtml" not in SOURCE, "use diffcourse.animation.show: matplotlib's own player loads a CDN stylesheet"
    assert "file: book/ch01_math" in (REPO / "_toc.yml").read_text(), "book/ch01_math is not listed in _toc.yml"


def test_code_cells_seed_their_randomness():
    cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", SOURCE, flags=re.S)
    unseeded = [c.splitlines()[0] for c in cells
                if re.search(r"torch\.(randn|randint|rand)\(", c) and "generator=" not in c]
    assert not unseeded, f"cells draw random numbers without an explicit generator: {unseeded}"
