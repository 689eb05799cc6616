"""diffcourse: the reference package of the Week 14 diffusion models course.

Every public function names the book section and equation it implements.
"""

__version__ = "0.1.0"
