"""The end-of-week quiz (``solutions/ch09_quiz/quiz.ipynb``): wrong answers are rejected with a hint that
does not give the answer away, other forms of a right answer are accepted, the released copy holds no
answer in any form, and the real autograder gives the solution full marks, the released notebook zero,
and a student's feedback hints but no answers.

Fast tests run the notebook's cells in-process with ``tests/nbharness.py`` (no kernel), skipping the
checklist cell, with one answer cell replaced. The right answers are read from the solution notebook
(its ``q1() ... q11()``), never retyped here.

The assessment contract (``tests/test_assessment_contract.py``) applies as to every notebook: each answer
cell declares its function ``qk`` in its ``grading`` metadata, and the one generic mutant that could apply
to a function with no arguments (``in_place``) is exempt with its reason; the independence check runs.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import nbformat
import pytest

from nbharness import (REPO, assert_full_marks_and_zero, assert_mistake_caught, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, exercise_runner, grade_id, load_solution)

ASSIGNMENT, NOTEBOOK = "ch09_quiz", "quiz"
N_QUESTIONS, MAX_SCORE = 11, 27
CHOICE = {1, 3, 5, 6, 9, 10}                    # the multiple-choice questions; the others ask for a number
SOLUTION = load_solution(ASSIGNMENT, NOTEBOOK)
run = exercise_runner(ASSIGNMENT, NOTEBOOK, skip=("checklist",), n_exercises=N_QUESTIONS)


def _answers() -> dict[int, object]:
    """The solution's answer to each question: its ``qk()`` run from the solution cells."""
    ns: dict = {}
    exec("import math", ns)
    for cell in SOLUTION.cells:
        if (grade_id(cell) or "").endswith("_solution"):
            exec(cell.source, ns)
    return {k: ns[f"q{k}"]() for k in range(1, N_QUESTIONS + 1)}


ANSWERS = _answers()


def _cell(k: int, expr: str) -> str:
    """An answer cell whose ``qk()`` returns ``expr``."""
    return f"import numpy as np\nimport torch\n\n\ndef q{k}():\n    return {expr}\n"


FORM = [   # (question, wrong answer, fragment): caught by the visible check, whatever the question asks
    (1, "'E'", "one letter from A to D"), (1, "2", "one letter in quotes"), (3, "'B or C'", "one letter from A to D"),
    (5, "['D']", "one letter in quotes"), (2, "'about 0.6'", "return a number"), (2, "torch.ones(2)", "not an array"),
    (2, "float('nan')", "finite"), (4, "True", "one number"), (4, "-48", "cannot be right"),
    (2, "1.5", "cannot be right"), (7, "38.5", "whole number"), (8, "0", "cannot be right"), (11, "[2304]", "one number"),
]
WRONG = [   # (question, plausible wrong answer, fragment of its hint)
    (1, "'A'", "the noise of step t"), (1, "'C'", "another target"), (1, "'D'", "fixed before training"),
    (2, "0.36", "alpha_bar_3 itself"), (2, "0.5", "last step alone"), (2, "math.sqrt(0.5)", "last step alone"),
    (2, "0.8", "coefficient of the noise"), (2, "math.sqrt(0.72)", "stops one step early"), (2, "0.01", "not beta_s"),
    (2, "0.65", "Compute alpha_bar_3"),
    (3, "'A'", "not training tricks"), (3, "'B'", "Distillation"), (3, "'d'", "convert into each other"),
    (4, "64", "spatial positions (H x W)"), (4, "192", "latent's channels"), (4, "1 / 48", "Upside down"),
    (4, "8", "downsampling factor"), (4, "0.75", "spatial positions too"), (4, "50", "Count C x H x W"),
    (5, "'A'", "spatial map"), (5, "'B'", "Pooled text"), (5, "'C'", "One network serves every prompt"),
    (6, "'B'", "diversity against w"), (6, "'C'", "nothing renormalises"), (6, "'D'", "concentrates the samples"),
    (7, "40", "Heun's last step"), (7, "19", "two predictions per evaluation"), (7, "20", "Count both effects"),
    (7, "10", "more than once per step"), (7, "37", "Count Heun's calls"),
    (8, "768 * 320", "frozen weight W itself"), (8, "768 * 320 + 4352", "W stays frozen"), (8, "4 * 768", "A alone"),
    (8, "4 * 320", "B alone"), (8, "16", "thin, not square"), (8, "768 + 320", "multiply by the rank"),
    (8, "4353", "Add up the entries"),
    (9, "'A'", "Check the sign"), (9, "'B'", "DDPM target"), (9, "'C'", "distance travelled"),
    (10, "'A'", "regression"), (10, "'B'", "VAE latent"), (10, "'D'", "noise level still enters"),
    (11, "33 * 16 * 16", "Compress time first"), (11, "8 * 16 * 16", "first frame on its own"),
    (11, "9 * 32 * 32", "2 x 2 patches"), (11, "33 * 128 * 128", "Compress with the VAE"),
    (11, "33 * 32 * 32", "Compress time as well"), (11, "2300", "Apply eq. (8.12)"),
]
RIGHT = {   # question -> other forms of the right answer, written from the solution's answer
    1: ["'b'", "' B '", "'(b)'", "'B)'", "'B.'"],
    2: ["0.6", "0.6000", "'0.6'", "math.sqrt(0.36)", "np.float64(0.6)", "torch.tensor(0.6)", "0.6004"],
    3: ["'c'"], 5: ["'d'"], 6: ["'a'"], 9: ["'d'"], 10: ["' c'"],
    4: ["48", "48.0", "'48'", "'48x'", "'48×'", "np.int64(48)", "torch.tensor(48.0)", "786432 / 16384"],
    7: ["38", "38.0", "'38'"],
    8: ["4352", "4352.0", "'4,352'", "'4 352'", "np.int64(4352)"],
    11: ["2304", "2304.0", "torch.tensor(2304)"],
}


def _message(results: dict, k: int) -> str:
    return " | ".join(m for g, m in results.items() if m and g.startswith(f"test_ex{k}_"))


def _reveals(message: str, k: int) -> bool:
    """Whether ``message`` states question k's answer (its letter as a word, or its number in any usual form)."""
    answer = ANSWERS[k]
    if k in CHOICE:
        return re.search(rf"(?<![\w']){answer}(?![\w'])", message.split(" is not right.", 1)[-1]) is not None
    value = float(answer)
    forms = ({f"{value:.0f}", f"{value:,.0f}", f"{value:.1f}"} if value.is_integer() else
             {f"{value:g}", f"{value:.2f}", f"{value:.3f}", str(answer)})
    return any(re.search(rf"(?<![\d.,]){re.escape(f)}(?![\d])", message) for f in forms)


def test_the_solution_passes_every_check_and_every_question_counts():
    results = run({})
    assert len(results) == 2 * N_QUESTIONS and not any(results.values()), results
    points = {grade_id(c): c.metadata["nbgrader"].get("points", 0) for c in SOLUTION.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    assert sum(points.values()) == MAX_SCORE
    assert all(points[f"test_ex{k}_visible"] == 0 for k in ANSWERS), "a well-formed guess must earn nothing"
    assert all(points[f"test_ex{k}_hidden"] == (2 if k in CHOICE else 3) for k in ANSWERS)
    assert sorted(k for k, a in ANSWERS.items() if isinstance(a, str)) == sorted(CHOICE)


@pytest.mark.parametrize("k,expr,fragment", FORM + WRONG, ids=[f"q{k}-{e}" for k, e, _ in FORM + WRONG])
def test_a_wrong_answer_gets_a_hint_that_does_not_give_the_answer(k, expr, fragment):
    results = run({f"ex{k}_solution": _cell(k, expr)}, only=k)
    assert_mistake_caught(results, k, f"q{k}() = {expr}", fragment)
    message = _message(results, k)
    echo = message.replace(expr.strip("'"), "<your answer>")      # quoting the student's own answer back is fine
    assert not _reveals(echo, k), f"question {k}: the message for {expr} gives the answer away: {message}"


@pytest.mark.parametrize("k,expr", [(k, e) for k, forms in RIGHT.items() for e in forms],
                         ids=[f"q{k}-{e}" for k, forms in RIGHT.items() for e in forms])
def test_another_form_of_the_right_answer_is_accepted(k, expr):
    failed = {g: m for g, m in run({f"ex{k}_solution": _cell(k, expr)}, only=k).items() if m}
    assert not failed, f"q{k}() = {expr} is right and was rejected: {failed}"


def test_every_wrong_letter_of_every_choice_question_has_its_own_hint():
    for k in CHOICE:
        hinted = {e.strip("'").upper() for q, e, _ in WRONG if q == k}
        assert hinted == set("ABCD") - {ANSWERS[k]}, f"question {k}: wrong letters tested {hinted}"


def test_the_answers_agree_with_the_course_code():
    """The numbers the quiz grades are the ones the course's own code computes (book §4.1, §6.4, §7.2, §8.7)."""
    import math

    import torch
    from torch import nn

    from diffcourse.control.lora import LoRALinear
    from diffcourse.flow.samplers import heun_nfe
    from diffcourse.latent.arithmetic import latent_size
    from diffcourse.video.spacetime import token_count

    alpha_bar = torch.cumprod(1 - torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64), 0)
    assert math.isclose(ANSWERS[2], math.sqrt(float(alpha_bar[-1])))
    assert ANSWERS[4] == latent_size(512, 512)["value_ratio"]
    assert ANSWERS[7] == 2 * heun_nfe(torch.linspace(1, 0, 11))
    lora = LoRALinear(nn.Linear(768, 320, bias=False), r=4)
    assert ANSWERS[8] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert ANSWERS[11] == token_count(33, 256, 256, (4, 8), (1, 2), causal=True)["tokens"]


def test_the_released_notebook_holds_no_answer_in_any_form():
    released, stubs = assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_QUESTIONS, (
        "    return \"", "alpha_bar_3 =", "heun_calls", "_want =", "_hints", "expect(_got =="))
    from nbgrader.utils import compute_checksum

    for cell in released.cells:
        gid = grade_id(cell)
        if gid and gid.endswith("_hidden"):
            assert not cell.source.strip(), f"{gid} must be empty in the released notebook"
        if "nbgrader" in cell.metadata:   # nbgrader's checksum is of the released source: it hashes nothing hidden
            assert cell.metadata["nbgrader"]["checksum"] == compute_checksum(cell), f"{gid}: checksum of what?"
        assert set(cell.metadata) <= {"deletable", "editable", "nbgrader", "grading", "tags"}, cell.metadata
    text = re.sub(r'"checksum": "[0-9a-f]{32}"', "", json.dumps(released))   # checked above: hashes of what is shown
    for k, answer in ANSWERS.items():
        if k not in CHOICE:
            assert not _reveals(text, k), f"the released notebook states the answer of question {k}"
    assert not re.search(r"[0-9a-f]{40,}|[A-Za-z0-9+/]{40,}={0,2}", text), "a long hash or encoded blob is in the release"


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)


@pytest.mark.slow
def test_autograder_grades_other_forms_and_its_feedback_hints_without_answers(tmp_path):
    """Under the real autograder: answers in other forms score full marks; all-wrong answers score 0 and the
    student's feedback HTML carries the hints but neither the hidden checks nor the answers."""
    from autograder.demo import load_pair

    release, _ = load_pair(ASSIGNMENT, NOTEBOOK)
    first_wrong = {}
    for k, expr, fragment in WRONG:
        first_wrong.setdefault(k, (expr, fragment))
    for student, answer in [("other_forms", lambda k: RIGHT[k][-1]), ("all_wrong", lambda k: first_wrong[k][0])]:
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
        for cell in nb.cells:
            m = re.fullmatch(r"ex(\d+)_solution", grade_id(cell) or "")
            if m:
                cell.source = _cell(int(m.group(1)), answer(int(m.group(1))))
        folder = tmp_path / "submissions" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{NOTEBOOK}.ipynb"))
    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(tmp_path / "submissions"),
                             "--assignment", ASSIGNMENT, "--jobs", "2", "--out", str(out), "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (out / "grades.csv").exists(), f"grading failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    rows = {r["student_id"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert float(rows["other_forms"]["score"]) == MAX_SCORE, rows["other_forms"]
    assert float(rows["all_wrong"]["score"]) == 0, rows["all_wrong"]
    page = (out / "feedback" / "all_wrong" / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()
    page = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.S)
    import html as _html

    shown = _html.unescape(re.sub(r"<[^>]+>", " ", page))
    for k, (expr, fragment) in first_wrong.items():
        assert fragment in shown, f"the feedback should carry question {k}'s hint {fragment!r}"
    for hidden in ("_want", "_hints", "BEGIN HIDDEN", "expect(_got =="):
        assert hidden not in shown, f"the feedback shows hidden test code ({hidden!r})"
    for k in ANSWERS:
        if k not in CHOICE:
            assert not _reveals(shown, k), f"the feedback states the answer of question {k}"
