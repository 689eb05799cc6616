"""The end-of-week checklist: the foundation-gap audit and the completion gate, ticked in JupyterLab.

The items are defined once, here (:data:`SECTIONS`). The book's revision page (``book/revision.md``,
"Before you move on") shows them as a MyST task list, and ``tests/test_checklist.py`` checks that the
page's lists and :data:`SECTIONS` agree item for item, so the two cannot drift apart;
:func:`markdown_tasklist` writes the page's text from the data.

In JupyterLab, :class:`Checklist` shows one ipywidgets check box per item (the last cell of the
end-of-week quiz notebook, ``notebooks/ch09_quiz/quiz.ipynb``). Every tick is saved at once to a
small JSON file, so reopening the notebook (or restarting the kernel) restores the ticks:

- the file is ``~/.diffcourse/checklist.json`` unless the ``DIFFCOURSE_CHECKLIST`` environment
  variable or the ``path`` argument names another (for example one next to the notebook);
- it holds ``{"version": 1, "ticks": {item id: true/false}}``; ids of items this version does not
  know are kept as they are when the file is rewritten;
- a file that cannot be read (not JSON, wrong layout) is never overwritten: it is renamed to
  ``checklist.json.corrupt`` (``.corrupt-1``, ... if that exists), the widget says so in words and
  starts from empty boxes (:func:`open_ticks`);
- writes are atomic (a temporary file, then :func:`os.replace`), so an interrupted save leaves the
  previous file whole.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Item", "SECTIONS", "ENV_VAR", "VERSION", "ChecklistFileError", "default_path", "items", "plain",
           "markdown_tasklist", "load_ticks", "save_ticks", "open_ticks", "Checklist"]

ENV_VAR = "DIFFCOURSE_CHECKLIST"
VERSION = 1


@dataclass(frozen=True)
class Item:
    """One box: a stable ``id`` (the key in the JSON file) and its ``text`` in Markdown, as the book shows it."""

    id: str
    text: str


# The single source of the lists on book/revision.md, "Before you move on" (one `### ` heading each).
SECTIONS: dict[str, tuple[Item, ...]] = {
    "Foundation-gap audit": (
        Item("gap-noise-to-image", "I can explain how diffusion generates an image from pure noise."),
        Item("gap-latent-space", "I can explain what latent space is and why Stable Diffusion uses it."),
        Item("gap-text-conditioning", "I can explain how text conditioning enters the model."),
        Item("gap-speed-quality", "I can explain the main speed-versus-quality trade-offs at inference time."),
    ),
    "Completion gate": (
        Item("gate-chapters", "I read every chapter end to end and submitted each graded notebook."),
        Item("gate-recall", "I answered the [daily recall](recall.md) prompts aloud across the week."),
        Item("gate-self-check",
             "I answered every chapter's self-check without opening the [answers](self_check_answers.md)."),
        Item("gate-interview", "I practised the [interview questions](interview.md) aloud."),
        Item("gate-quiz", "I took the end-of-week quiz and reread the chapter of every question I missed."),
        Item("gate-audit", "Every box of the foundation-gap audit above is ticked."),
        Item("gate-revision", "I worked through this revision page honestly, traps included."),
    ),
}


class ChecklistFileError(ValueError):
    """The checklist file exists but cannot be read as a checklist (the message says where and why)."""


def items() -> list[tuple[str, Item]]:
    """Every (section title, item) pair, in page order."""
    return [(title, item) for title, section in SECTIONS.items() for item in section]


def plain(markdown: str) -> str:
    """The item's text without Markdown link and code syntax: ``[answers](x.md)`` -> ``answers``."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown)
    return text.replace("`", "")


def markdown_tasklist(level: int = 3) -> str:
    """The lists as the book page writes them: a heading of ``level`` per section, then ``- [ ] item`` lines."""
    blocks = []
    for title, section in SECTIONS.items():
        blocks.append("#" * level + f" {title}\n\n" + "\n".join(f"- [ ] {item.text}" for item in section))
    return "\n\n".join(blocks) + "\n"


def default_path() -> Path:
    """Where ticks are kept: ``$DIFFCOURSE_CHECKLIST`` if set, else ``~/.diffcourse/checklist.json``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".diffcourse" / "checklist.json"


def load_ticks(path: str | os.PathLike) -> dict[str, bool]:
    """The ticks saved in ``path`` (item id -> ticked); ``{}`` when the file does not exist yet.

    Raises :class:`ChecklistFileError` when the file exists but is not a checklist file.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChecklistFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("ticks"), dict):
        raise ChecklistFileError(f"{path} is JSON but not a checklist file: expected "
                                 '{"version": 1, "ticks": {item id: true/false}}')
    bad = [k for k, v in data["ticks"].items() if not isinstance(v, bool)]
    if bad:
        raise ChecklistFileError(f"{path}: the ticks of {bad} are not true/false")
    return dict(data["ticks"])


def save_ticks(path: str | os.PathLike, ticks: dict[str, bool]) -> None:
    """Write ``ticks`` to ``path`` atomically (creating its folder), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": VERSION, "ticks": dict(sorted(ticks.items()))}, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_ticks(path: str | os.PathLike) -> tuple[dict[str, bool], str | None]:
    """``(ticks, problem)``: the saved ticks, or, for an unreadable file, ``{}`` and a message in words.

    An unreadable file is renamed aside (``<name>.corrupt``, or ``.corrupt-1``, ... when taken) before
    anything new is written, so nothing in it is lost; the message names both paths.
    """
    path = Path(path)
    try:
        return load_ticks(path), None
    except ChecklistFileError as exc:
        aside = path.with_name(path.name + ".corrupt")
        n = 0
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{n}")
        os.replace(path, aside)
        return {}, (f"Could not read your saved checklist: {exc}. The file was kept, renamed to {aside}; "
                    f"the boxes below start empty and new ticks are saved to {path}.")


class Checklist:
    """The audit and gate as ipywidgets check boxes whose ticks persist in a JSON file (see the module).

    ``path``: the JSON file (default :func:`default_path`). ``widget`` is the box to display; ``boxes``
    maps item id -> its ``Checkbox``; ``problem`` is the message shown when the saved file was unreadable.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        import ipywidgets as widgets

        self.path = Path(path).expanduser() if path is not None else default_path()
        self._ticks, self.problem = open_ticks(self.path)
        self.boxes: dict[str, widgets.Checkbox] = {}
        rows: list = []
        if self.problem:
            rows.append(widgets.HTML(f"<b style='color:#b00'>{_escape(self.problem)}</b>"))
        for title, section in SECTIONS.items():
            rows.append(widgets.HTML(f"<h4>{_escape(title)}</h4>"))
            for item in section:
                box = widgets.Checkbox(value=bool(self._ticks.get(item.id, False)), description=plain(item.text),
                                       indent=False, layout=widgets.Layout(width="auto"))
                box.observe(self._changed(item.id), names="value")
                self.boxes[item.id] = box
                rows.append(box)
        self.status = widgets.HTML(self._summary())
        rows.append(self.status)
        self.widget = widgets.VBox(rows)

    def _changed(self, item_id: str):
        def on_change(change):
            self.tick(item_id, bool(change["new"]))
        return on_change

    def tick(self, item_id: str, value: bool = True) -> None:
        """Set one item (also what clicking its box does) and save the file at once."""
        if item_id not in self.boxes:
            raise KeyError(f"no checklist item {item_id!r}; the items are {list(self.boxes)}")
        self._ticks[item_id] = bool(value)
        if self.boxes[item_id].value != bool(value):
            self.boxes[item_id].value = bool(value)      # fires on_change -> tick again, same value: harmless
        save_ticks(self.path, self._ticks)
        self.status.value = self._summary()

    @property
    def ticks(self) -> dict[str, bool]:
        """Item id -> ticked, for every item of :data:`SECTIONS`."""
        return {item.id: bool(self._ticks.get(item.id, False)) for _, item in items()}

    def _summary(self) -> str:
        done, total = sum(self.ticks.values()), len(self.boxes)
        text = f"{done} of {total} ticked, saved in {self.path}"
        if done == total:
            text += ": every box is ticked, you are through the gate"
        return f"<i>{_escape(text)}</i>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
