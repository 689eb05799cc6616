"""nbgrader configuration for the course: nbgrader's source = solutions/, release = notebooks/.

Used by `nbgrader generate_assignment` / `nbgrader validate` run from the repository root and by
`python -m autograder release`. Grading uses its own course folder (see autograder/course.py).
"""
import os

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.course_id = "diffcourse"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.Execute.timeout = 120
