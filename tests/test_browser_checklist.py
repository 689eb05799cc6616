"""The week's checklist in a real JupyterLab in a real browser: tick a box, open the notebook again, the box is
still ticked (the ticks went to the JSON file, and a new ``Checklist`` read them back).

The JupyterLab server, the browser and the helpers are those of ``tests/test_browser_lab.py`` (a temporary
copy of ``notebooks/``; nothing is written into the repository or the user's home: the checklist file is
in a temporary folder). The quiz is completed from its nbgrader source so that Run All reaches the last
cell. Every wait is on a condition, never a fixed sleep.
"""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from diffcourse.checklist import items, load_ticks
from test_browser_lab import (KERNEL_TIMEOUT_MS, browser, completed_copy, error_outputs, lab, open_notebook,  # noqa: F401
                              run_all, shots, wait_until_idle_after_run)

pytestmark = pytest.mark.slow   # a JupyterLab server, a browser, two runs of the quiz

QUIZ, COMPLETED = "ch09_quiz/quiz.ipynb", "ch09_quiz/quiz_checklist.ipynb"
N_ITEMS = len(items())
STATUS = ".jp-NotebookPanel .widget-vbox .widget-html i"


@pytest.fixture(scope="module")
def quiz(lab, tmp_path_factory):
    """The quiz with every answer filled in and its checklist kept in a temporary file; yields that file."""
    _, _, root = lab
    ticks = tmp_path_factory.mktemp("ticks") / "checklist.json"
    filled = completed_copy(root / QUIZ, ROOT / "solutions" / QUIZ, root / COMPLETED)
    assert len(filled) == 11, f"expected the quiz's 11 answer cells to be filled from solutions/; got {filled}"
    nb = json.loads((root / COMPLETED).read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "checklist")
    source = "".join(cell["source"])
    assert "CHECKLIST_PATH = None" in source
    cell["source"] = source.replace("CHECKLIST_PATH = None", f"CHECKLIST_PATH = {str(ticks)!r}")
    (root / COMPLETED).write_text(json.dumps(nb, indent=1))
    return ticks


def show_checklist(browser, lab):
    """Open the completed quiz, Run All, wait for the checklist's boxes; returns (page, checkbox locator)."""
    page, record = open_notebook(browser, lab, COMPLETED)
    run_all(page)
    boxes = page.locator(".jp-NotebookPanel .widget-checkbox")
    page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .widget-checkbox').length === {N_ITEMS}",
                           timeout=KERNEL_TIMEOUT_MS)
    wait_until_idle_after_run(page)
    errors = error_outputs(page)
    assert not any("Error" in e for e in errors), "the completed quiz should run with no error:\n" + "\n---\n".join(errors)
    return page, record, boxes


def test_a_ticked_box_is_still_ticked_when_the_notebook_is_opened_again(browser, lab, quiz, shots):
    page, record, boxes = show_checklist(browser, lab)
    latent = boxes.filter(has_text="what latent space is")
    assert latent.count() == 1, "the checklist should show the latent-space item of the foundation-gap audit"
    assert not latent.locator("input").is_checked()
    latent.scroll_into_view_if_needed()
    latent.locator("input").click()                                     # as a student ticks it
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('{STATUS}'))
                                   .some(e => e.textContent.startsWith('1 of {N_ITEMS} ticked'))""",
                           timeout=KERNEL_TIMEOUT_MS)                   # the kernel saved it, then said so
    page.screenshot(path=str(shots / "checklist_ticked.png"))
    assert load_ticks(quiz) == {"gap-latent-space": True}, f"the tick should be saved to {quiz}"
    assert not record.remote_requests, f"JupyterLab requested other hosts: {record.remote_requests}"
    page.close()

    page, record, boxes = show_checklist(browser, lab)                 # a new page, a new Checklist from the file
    checked = [boxes.nth(i).locator("input").is_checked() for i in range(N_ITEMS)]
    page.screenshot(path=str(shots / "checklist_reopened.png"))
    assert boxes.filter(has_text="what latent space is").locator("input").is_checked(), \
        "the box ticked before should come back ticked"
    assert sum(checked) == 1, f"only that box should be ticked; ticked: {checked}"
    assert not record.console_errors, f"JupyterLab logged console errors: {record.console_errors}"
    page.close()
