"""The week's checklist (``diffcourse.checklist``): ticks persist, a corrupt file loses nothing, and the
widget's items are exactly the task lists of ``book/revision.md`` ("Before you move on").

The widget is driven as JupyterLab drives it: a click sets the ``Checkbox``'s ``value`` trait, whose
observer saves the file. (The check in a real browser is in ``tests/test_browser_lab.py``'s style and
not repeated here.)
"""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from conftest import ROOT
from diffcourse import checklist as cl


def _page_lists() -> dict[str, list[str]]:
    """The task lists under each `### ` heading of revision.md's "Before you move on" section, item text as written
    (an item's continuation lines joined with one space)."""
    text = (ROOT / "book" / "revision.md").read_text()
    m = re.search(r"^## Before you move on\s*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "book/revision.md has no '## Before you move on' section"
    lists: dict[str, list[str]] = {}
    title = None
    for line in m.group(1).splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            lists[title] = []
        elif line.startswith("- [ ] ") or line.startswith("- [x] "):
            assert title, f"a task outside any ### heading: {line!r}"
            lists[title].append(line[6:].strip())
        elif line.startswith("  ") and line.strip() and title and lists[title]:
            lists[title][-1] += " " + line.strip()
    return lists


def test_the_book_page_and_the_widget_have_the_same_items():
    page = _page_lists()
    data = {title: [item.text for item in section] for title, section in cl.SECTIONS.items()}
    assert list(page) == list(data), f"sections differ: the page has {list(page)}, diffcourse.checklist {list(data)}"
    for title in data:
        assert page[title] == data[title], (
            f"'{title}': book/revision.md and diffcourse.checklist.SECTIONS disagree;\n page: {page[title]}\n"
            f" data: {data[title]}\n(change both together: diffcourse.checklist.markdown_tasklist() writes the lists)")


def test_items_have_unique_ids_and_plain_labels():
    ids = [item.id for _, item in cl.items()]
    assert len(ids) == len(set(ids)) >= 10
    assert len(cl.SECTIONS["Foundation-gap audit"]) == 4
    assert cl.plain("the [answers](self_check_answers.md) and `code`") == "the answers and code"


def test_tick_saves_and_a_new_checklist_restores_it(tmp_path):
    path = tmp_path / "sub" / "checklist.json"
    first = cl.Checklist(path)
    assert first.problem is None and not any(first.ticks.values())
    first.boxes["gap-latent-space"].value = True               # what a click in JupyterLab does
    first.tick("gate-recall")
    saved = json.loads(path.read_text())
    assert saved["version"] == cl.VERSION
    assert saved["ticks"] == {"gap-latent-space": True, "gate-recall": True}
    first.boxes["gate-recall"].value = False                  # unticking is saved too
    again = cl.Checklist(path)
    assert again.ticks["gap-latent-space"] is True and again.ticks["gate-recall"] is False
    assert again.boxes["gap-latent-space"].value is True and again.boxes["gate-recall"].value is False
    assert sum(again.ticks.values()) == 1 and "1 of" in again.status.value
    assert [p.name for p in path.parent.iterdir()] == ["checklist.json"], "a temporary file was left behind"


def test_every_box_ticked_says_the_gate_is_passed(tmp_path):
    c = cl.Checklist(tmp_path / "c.json")
    for item_id in c.boxes:
        c.tick(item_id)
    assert all(cl.Checklist(tmp_path / "c.json").ticks.values())
    assert "through the gate" in c.status.value
    with pytest.raises(KeyError, match="no checklist item"):
        c.tick("no-such-item")


def test_unknown_ids_in_the_file_are_kept(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "ticks": {"an-item-of-a-later-version": True}}))
    c = cl.Checklist(path)
    c.tick("gap-noise-to-image")
    assert cl.load_ticks(path) == {"an-item-of-a-later-version": True, "gap-noise-to-image": True}


@pytest.mark.parametrize("content,reason", [
    ("{\"version\": 1, \"ticks\": {\"gap-latent-space\": tru", "not valid JSON"),
    ("[true, false]", "not a checklist file"),
    ("{\"version\": 1, \"ticks\": {\"gap-latent-space\": \"yes\"}}", "not true/false"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_a_corrupt_file_is_reported_and_kept(tmp_path, content, reason):
    path = tmp_path / "checklist.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    original = path.read_bytes()
    with pytest.raises(cl.ChecklistFileError, match=reason):
        cl.load_ticks(path)
    c = cl.Checklist(path)
    assert c.problem and reason in c.problem and str(path) in c.problem and "checklist.json.corrupt" in c.problem
    assert (tmp_path / "checklist.json.corrupt").read_bytes() == original, "the unreadable file must be kept as it was"
    assert "Could not read your saved checklist" in c.widget.children[0].value
    assert not any(c.ticks.values())
    c.tick("gate-interview")                                   # a fresh, valid file
    assert cl.load_ticks(path) == {"gate-interview": True}
    path.write_text("not json either")                         # a second accident does not overwrite the first copy
    assert cl.Checklist(path).problem
    assert (tmp_path / "checklist.json.corrupt").read_bytes() == original
    assert (tmp_path / "checklist.json.corrupt-1").read_text() == "not json either"


def test_the_path_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv(cl.ENV_VAR, str(tmp_path / "from_env.json"))
    assert cl.default_path() == tmp_path / "from_env.json"
    cl.Checklist().tick("gap-speed-quality")
    assert cl.load_ticks(tmp_path / "from_env.json") == {"gap-speed-quality": True}
    monkeypatch.delenv(cl.ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cl.default_path() == tmp_path / "home" / ".diffcourse" / "checklist.json"


def test_the_quiz_notebook_cell_shows_the_checklist(tmp_path, monkeypatch):
    """The released quiz's last cell builds the widget from the saved ticks (and does nothing when graded)."""
    nb = nbformat.read(str(ROOT / "notebooks" / "ch09_quiz" / "quiz.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "checklist")
    path = tmp_path / "ticks.json"
    cl.save_ticks(path, {"gate-quiz": True})
    monkeypatch.setenv(cl.ENV_VAR, str(path))
    shown = []
    ns = {"GRADING": False, "display": shown.append}
    exec(cell.source, ns)
    assert len(shown) == 1 and shown[0] is ns["checklist"].widget
    assert ns["checklist"].boxes["gate-quiz"].value is True
    graded = {"GRADING": True, "display": shown.append}
    exec(cell.source, graded)
    assert len(shown) == 1 and "checklist" not in graded, "under grading the cell must not show or touch the checklist"
