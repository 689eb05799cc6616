"""Feedback that keeps the hidden tests hidden.

nbgrader puts the hidden tests back into every submission before it runs it (that is how they are
graded), and its ``GenerateFeedback`` renders the autograded notebook as it is, so by default the
HTML a student receives holds the source of every hidden test, and the traceback of a failing one
quotes its lines (nbgrader issues #917 and #1363; nbgrader 0.9.6 has no option for it).

``HideHiddenTests`` runs in ``GenerateFeedback`` before the HTML is written (see
``grade.nbgrader_config``). In every cell that had a ``### BEGIN/END HIDDEN TESTS`` region it

- removes the region from the source and leaves one comment line in its place, and
- reduces each error output to ``ErrorName: message``: the student still sees which test failed
  and why (every message names what differs), but not the frames that quote the hidden code.

It changes only the copy that becomes HTML: the gradebook's scores were saved by ``Autograde``
before, and ``GetGrades`` (which runs first) reads them from the gradebook, so they are unchanged.
"""
from __future__ import annotations

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

PLACEHOLDER = "# hidden tests ran here; their code is not shown (the failure message, if any, is below)"


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden-test code from the feedback copy of a notebook (source and tracebacks)."""

    begin = Unicode("### BEGIN HIDDEN TESTS").tag(config=True)
    end = Unicode("### END HIDDEN TESTS").tag(config=True)

    def _strip(self, source: str) -> tuple[str, bool]:
        kept, inside, found = [], False, False
        for line in source.split("\n"):
            if self.begin in line:
                inside, found = True, True
                kept.append(PLACEHOLDER)
            elif self.end in line and inside:
                inside = False
            elif not inside:
                kept.append(line)
        if inside:   # a region that never ends: hide everything after its start
            found = True
        return "\n".join(kept), found

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            return cell, resources
        cell.source, hidden = self._strip(cell.source)
        if hidden:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    # the message only: the traceback's frames quote the hidden lines
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources
