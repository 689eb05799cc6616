"""The week pages (recall, self-check answers, interview, revision, reading) stay true to the chapters.

Static checks, no build: every section link points at a heading that exists, every chapter's
self-check question has exactly one folded answer, and the claims the answers make about shipped
files still hold. (tests/test_book.py builds the whole book with --warningiserror.)
"""
from __future__ import annotations

import json
import re

import pytest
from docutils.nodes import make_id

from conftest import ROOT

BOOK = ROOT / "book"
PAGES = ["recall", "self_check_answers", "interview", "revision", "reading"]
ANSWERED = {"ch01_math": "Chapter 1", "ch02_sampling": "Chapter 2", "ch03_unet": "Chapter 3",
            "ch04_latent": "Chapter 4", "ch05_guidance": "Chapter 5", "ch06_control": "Chapter 6", "ch07_flow": "Chapter 7",
            "ch08_video": "Chapter 8"}


def _headings(page: str) -> set[str]:
    """Section ids Sphinx gives the headings of a chapter page (docutils' make_id of the title)."""
    text, ids, in_code = (BOOK / f"{page}.md").read_text(), set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code if (line.startswith("```{code-cell}") or in_code) else in_code
            continue
        if not in_code and re.match(r"^#{1,3} ", line):
            ids.add(make_id(line.lstrip("#").strip()))
    return ids


def _section(text: str, title_start: str) -> str:
    """The text of the `## title...` section of a page, up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(title_start)}.*?$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section starting '## {title_start}'"
    return m.group(1)


@pytest.mark.parametrize("page", PAGES)
def test_page_is_static_markdown_in_the_book_folder(page):
    text = (BOOK / f"{page}.md").read_text()
    assert "{code-cell}" not in text, f"{page}.md must not execute code (it is a reading page)"
    assert re.search(r"^# ", text, re.M), f"{page}.md has no title"


@pytest.mark.parametrize("page", PAGES)
def test_every_section_link_points_at_an_existing_heading(page):
    text = (BOOK / f"{page}.md").read_text()
    links = re.findall(r'href="(ch\d\d_\w+)\.html#([^"]+)"', text)
    missing = [f"{p}#{a}" for p, a in links if a not in _headings(p)]
    assert not missing, f"{page}.md links to headings that do not exist (renamed?): {missing}"
    for target in re.findall(r"\]\(([\w.]+\.md)\)", text):
        assert (BOOK / target).exists(), f"{page}.md links to {target}, which does not exist"


@pytest.mark.parametrize("chapter,title", ANSWERED.items())
def test_every_self_check_question_has_one_folded_answer(chapter, title):
    questions = re.findall(r"^(\d+)\. ", _section((BOOK / f"{chapter}.md").read_text(), "Self-check questions"), re.M)
    answers = re.findall(r"^:::\{dropdown\} (\d+)\. ", _section((BOOK / "self_check_answers.md").read_text(), title), re.M)
    assert questions, f"found no numbered self-check questions in {chapter}.md"
    assert answers == questions, (f"{chapter}.md asks questions {questions} but self_check_answers.md answers "
                                  f"{answers}: add or renumber the answers")


def test_the_plan_questions_are_answered():
    interview = (BOOK / "interview.md").read_text()
    for q in ("What does a DDPM actually learn", "Why is latent diffusion so much faster",
              "What does classifier-free guidance do", "When would you add ControlNet",
              "If inference is too slow"):
        assert re.search(rf":::\{{dropdown\}} \d\. {re.escape(q)}", interview), f"interview.md lacks: {q}"
    answers = (BOOK / "self_check_answers.md").read_text()
    for q in ("closed-form formula", "What does the U-Net predict", "two passes", "latent diffusion dramatically faster",
              "guidance scale becomes too large", "DiT vs U-Net", "reduce latency"):
        assert q in answers, f"self_check_answers.md lacks the plan's question about '{q}'"


def test_recall_has_one_section_per_day_with_folded_prompts():
    text = (BOOK / "recall.md").read_text()
    for day in range(1, 8):
        body = _section(text, f"Day {day}:")
        assert body.count(":::{dropdown}") >= 5, f"day {day} of recall.md has fewer than five prompts"


def test_the_answers_claim_about_the_shipped_scaling_factor_holds():
    """Self-check 4.4's answer says the shipped s is below 1 (raw latents wider than unit variance)."""
    s = json.loads((ROOT / "zoo" / "shapes_sd" / "vae" / "config.json").read_text())["scaling_factor"]
    assert s < 1, f"the shipped VAE's scaling factor is {s}: rewrite the answer to Chapter 4's question 4"


def test_the_answers_claim_about_the_padded_prompt_length_holds():
    """Self-check 4.7's answer says the course's tokenizer pads to 20 tokens."""
    cfg = json.loads((ROOT / "zoo" / "shapes_sd" / "tokenizer" / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 20, "the tokenizer's padded length changed: fix the answer to Chapter 4's question 7"


def test_checklists_are_real_task_lists():
    text = (BOOK / "revision.md").read_text()
    assert "tasklist" in text.split("---")[1], "revision.md must enable MyST's tasklist extension in its front matter"
    assert len(re.findall(r"^- \[ \] ", text, re.M)) >= 4, "revision.md should carry the gap audit as a task list"
