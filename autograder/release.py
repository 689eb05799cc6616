"""Release: ``notebooks/{assignment}/`` is generated from ``solutions/{assignment}/`` by nbgrader.

``python -m autograder release [A ...]`` runs ``nbgrader generate_assignment`` (no gradebook) with
source = ``solutions/`` and release = ``notebooks/``; ``python -m autograder check-sync`` regenerates
into a temporary folder and reports every released notebook that differs (or is missing / extra),
which is what the sync test asserts.
"""
from __future__ import annotations

import filecmp
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def assignments(root: Path = REPO) -> list[str]:
    """Assignment ids: folders of ``solutions/`` holding at least one notebook."""
    src = root / "solutions"
    return sorted(p.name for p in src.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))) if src.is_dir() else []


def generate(assignment_ids: list[str], root: Path = REPO, release_dir: Path | None = None,
             course_dir: Path | None = None, use_db: bool = False, db_url: str | None = None) -> None:
    """nbgrader generate_assignment for each id, from ``root/solutions`` into ``release_dir``."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    from .env import ensure_venv_on_path

    ensure_venv_on_path()
    course = Path(course_dir or root)
    c = Config()
    c.CourseDirectory.root = str(course)
    c.CourseDirectory.source_directory = str((root / "solutions").resolve()) if course_dir else "solutions"
    c.CourseDirectory.release_directory = str(release_dir or (root / "notebooks"))
    c.CourseDirectory.course_id = "diffcourse"
    c.CourseDirectory.db_url = db_url or f"sqlite:///{course / 'gradebook.db'}"
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.GenerateAssignment.no_database = not use_db
    c.SaveCells.enabled = use_db
    c.GenerateAssignment.create_assignment = True
    api = NbGraderAPI(coursedir=CourseDirectory(config=c), config=c)
    for aid in assignment_ids:
        result = api.generate_assignment(aid, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {aid} failed:\n{result.get('error')}\n"
                               f"{result.get('log', '')[-3000:]}")


def _canonical(path: Path) -> str:
    return json.dumps(json.loads(path.read_text()), sort_keys=True, indent=1)


def out_of_sync(root: Path = REPO) -> list[str]:
    """Problems that make ``notebooks/`` differ from a fresh release of ``solutions/``."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "release"
        generate(assignments(root), root=root, release_dir=fresh, course_dir=Path(tmp))
        for aid in assignments(root):
            new_dir, old_dir = fresh / aid, root / "notebooks" / aid
            new = {p.relative_to(new_dir) for p in new_dir.rglob("*") if p.is_file()}
            old = {p.relative_to(old_dir) for p in old_dir.rglob("*") if p.is_file()} if old_dir.is_dir() else set()
            problems += [f"notebooks/{aid}/{p} is missing" for p in sorted(new - old)]
            problems += [f"notebooks/{aid}/{p} is not generated from solutions/" for p in sorted(old - new)]
            for p in sorted(new & old):
                same = (_canonical(new_dir / p) == _canonical(old_dir / p) if p.suffix == ".ipynb"
                        else filecmp.cmp(new_dir / p, old_dir / p, shallow=False))
                if not same:
                    problems.append(f"notebooks/{aid}/{p} differs from a fresh release of solutions/{aid}/{p}")
    return problems
