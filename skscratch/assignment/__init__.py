"""Course assignments: a student copy of skscratch with functions to write, and its grader.

    python -m skscratch assignment make OUTDIR [--exercises conv,batchnorm,...]
    python -m skscratch assignment check [EXERCISE]          (in a copy: the visible checks)
    python -m skscratch assignment grade COPY [--json results.json]
    python -m skscratch assignment grade-all SUBMISSIONS --csv grades.csv

catalog.py lists the exercises and their checks, points.json what each check is worth;
student_copy.py makes a copy (text.py writes its ASSIGNMENT.md); _cases.py builds every check's
inputs and expected values from the independent references of _references.py; grading.py runs
them on a copy, each exercise in a worker process (_worker.py) under time and memory limits, and
judges the results (_compare.py). A student copy carries only the student's side: catalog.py,
student.py (the `check` command), _programs.py, _compare.py, _casefile.py and the visible
checks.
"""

from skscratch.assignment.catalog import BY_NAME, EXERCISES, AssignmentError, parse_exercises
from skscratch.assignment.grading import (
    Grade,
    grade,
    grade_folder,
    gradescope,
    hidden_cases,
    load_points,
    report,
)
from skscratch.assignment.student import check
from skscratch.assignment.student_copy import fenced_bodies, make, strip_solutions

__all__ = [
    "BY_NAME",
    "EXERCISES",
    "AssignmentError",
    "Grade",
    "check",
    "fenced_bodies",
    "grade",
    "grade_folder",
    "gradescope",
    "hidden_cases",
    "load_points",
    "make",
    "parse_exercises",
    "report",
    "strip_solutions",
]
