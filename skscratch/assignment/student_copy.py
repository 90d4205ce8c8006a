"""Making a student copy: the package with the chosen exercises' bodies removed, installable.

In the teaching modules the bodies that students write are fenced by `# BEGIN SOLUTION` and
`# END SOLUTION` comment lines (the hint comments just above a fence stay). `make` copies the
package and replaces each fenced body of the chosen exercises with a `raise NotImplementedError`
that names the exercise; everything else keeps working. The copy gets:

    OUTDIR/skscratch/         the package; its assignment/ holds only the student's side:
                              the exercise list, the visible checks and what runs them
    OUTDIR/assignment.json    the manifest: the exercises this copy was made for
    OUTDIR/pyproject.toml     so that `pip install -e .` installs the copy
    OUTDIR/LICENSE            skscratch's licence, which every copy must carry
    OUTDIR/ASSIGNMENT.md      what to write, how to install, check and submit
    OUTDIR/tutorials/         the tutorials, run on the copy's functions: each chapter's
                              "Your turn" cell checks the exercise it poses, and the answers
                              to its closing exercises (fenced the same way) are removed
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from pathlib import Path

from skscratch.assignment import _cases
from skscratch.assignment._casefile import write_cases
from skscratch.assignment.catalog import EXERCISES, MANIFEST, VISIBLE, AssignmentError, Exercise
from skscratch.assignment.grading import load_points
from skscratch.assignment.text import assignment_text

PACKAGE = Path(__file__).resolve().parents[1]
TUTORIALS = PACKAGE.parent / "tutorials"  # in a clone of skscratch, beside the package
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
# The student's side of skscratch/assignment: everything else there stays with the instructor.
STUDENT_SIDE = ("catalog.py", "student.py", "_programs.py", "_compare.py", "_casefile.py")
STUDENT_INIT = '''"""The student's side of the assignment:
`python -m skscratch assignment check [EXERCISE]` runs the visible checks of your functions
(skscratch.assignment.student). The grader itself stays with your instructor."""

from skscratch.assignment.catalog import EXERCISES, AssignmentError
from skscratch.assignment.student import check

__all__ = ["EXERCISES", "AssignmentError", "check"]
'''


def fenced_bodies(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, enclosing function) of every fenced body, 0-based and inclusive
    of the marker lines."""
    lines = source.split("\n")
    return [(first, last, _enclosing_function(lines, first)) for first, last in _fences(lines)]


def _fences(lines: list[str]) -> list[tuple[int, int]]:
    found, start = [], None
    for i, line in enumerate(lines):
        if line.strip() == BEGIN:
            if start is not None:
                raise AssignmentError(f"line {i + 1}: {BEGIN} inside another fence")
            start = i
        elif line.strip() == END:
            if start is None:
                raise AssignmentError(f"line {i + 1}: {END} without {BEGIN}")
            found.append((start, i))
            start = None
    if start is not None:
        raise AssignmentError(f"line {start + 1}: {BEGIN} is never closed")
    return found


def _enclosing_function(lines: list[str], at: int) -> str:
    indent = len(lines[at]) - len(lines[at].lstrip())
    for line in reversed(lines[:at]):
        m = re.match(r"(\s*)def (\w+)\(", line)
        if m and len(m.group(1)) < indent:
            return m.group(2)
    raise AssignmentError(f"line {at + 1}: a fence outside any function")


def strip_solutions(source: str, exercise_of: dict[str, str]) -> str:
    """The source with each fenced body of the functions in `exercise_of` (function name ->
    exercise) replaced by a NotImplementedError; other fences lose only their marker lines."""
    lines = source.split("\n")
    for first, last, function in reversed(fenced_bodies(source)):
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        if function in exercise_of:
            message = f"exercise {exercise_of[function]}: write this part of {function}"
            lines[first : last + 1] = [f"{indent}raise NotImplementedError({message!r})"]
        else:
            del lines[last]
            del lines[first]
    return "\n".join(lines)


def strip_tutorial(source: str, chapter: str) -> str:
    """A tutorial with the fenced answer of each closing exercise replaced by a
    NotImplementedError that says where the student's answer goes."""
    lines = source.split("\n")
    for first, last in reversed(_fences(lines)):
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        message = f"{chapter}: write your answer to this exercise in place of this line"
        lines[first : last + 1] = [f"{indent}raise NotImplementedError({message!r})"]
    return "\n".join(lines)


def make(
    outdir: str | Path, exercises: list[Exercise], *, seed: int = 0, points: dict | None = None
) -> Path:
    """Write a student copy to OUTDIR (see the module's docstring); `seed` draws the inputs of
    its visible checks, and ASSIGNMENT.md gives the points of `points` (grading.load_points).

    OUTDIR must not exist or be empty: nothing already there is overwritten."""
    out = Path(outdir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AssignmentError(f"{out} exists and is not an empty folder; choose a new one")
    by_file: dict[str, dict[str, str]] = {}
    for e in exercises:
        for module, function in e.functions:
            by_file.setdefault(module, {})[function] = e.name
    # Built beside OUTDIR first, then moved in: a failure leaves no half-made copy in OUTDIR.
    staging = out.with_name(f".{out.name}.partial")
    try:
        if staging.exists():
            shutil.rmtree(staging)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
        shutil.copytree(PACKAGE, staging / "skscratch", ignore=ignore)
        for path in sorted((staging / "skscratch").rglob("*.py")):
            module = path.relative_to(staging / "skscratch").as_posix()
            source = path.read_text()
            if BEGIN in source:
                path.write_text(strip_solutions(source, by_file.get(module, {})))
        _student_side(staging / "skscratch" / "assignment", seed)
        names = [e.name for e in exercises]
        (staging / MANIFEST).write_text(json.dumps({"exercises": names}, indent=1) + "\n")
        (staging / "pyproject.toml").write_text(_pyproject())
        (staging / "LICENSE").write_text(_license())
        (staging / "ASSIGNMENT.md").write_text(assignment_text(exercises, points or load_points()))
        _tutorials(staging / "tutorials")
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            item.rename(out / item.name)
    except OSError as exc:
        raise AssignmentError(f"cannot write the student copy to {out}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _student_side(folder: Path, seed: int) -> None:
    """Replace the copied assignment package by the student's side of it, and store the visible
    checks of every exercise (a copy made for some exercises keeps the rest's solutions, whose
    checks pass; `check` runs the manifest's)."""
    shutil.rmtree(folder)
    folder.mkdir()
    for name in STUDENT_SIDE:
        shutil.copy2(Path(__file__).with_name(name), folder / name)
    (folder / "__init__.py").write_text(STUDENT_INIT)
    if seed not in _VISIBLE:  # the same for every copy of a seed: worked out once
        _VISIBLE[seed] = [c for e in EXERCISES for c in _cases.build(e.name, seed, hidden=False)]
    write_cases(folder / VISIBLE, _VISIBLE[seed], expected=True)


_VISIBLE: dict[int, list] = {}


def _tutorials(folder: Path) -> None:
    chapters = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    if not chapters:
        raise AssignmentError(
            f"no tutorials in {TUTORIALS}: make a student copy from a clone of skscratch, "
            "whose tutorials go into the copy"
        )
    folder.mkdir()
    for path in chapters:
        (folder / path.name).write_text(strip_tutorial(path.read_text(), path.stem))


def _pyproject() -> str:
    meta = importlib.metadata.metadata("skscratch")
    requires = importlib.metadata.requires("skscratch") or []
    plain = [r for r in requires if "extra ==" not in r]
    plot = [r.split(";")[0].strip() for r in requires if 'extra == "plot"' in r]
    return (
        "# A student copy of skscratch (python -m skscratch assignment make).\n"
        "[build-system]\n"
        'requires = ["setuptools>=77"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "skscratch"\n'
        f'version = "{meta["Version"]}"\n'
        'description = "A student copy of skscratch: SK networks from scratch in NumPy."\n'
        'license = "MIT"\n'
        'license-files = ["LICENSE"]\n'
        'requires-python = ">=3.10"\n'
        f"dependencies = {json.dumps(plain)}\n\n"
        "[project.optional-dependencies]\n"
        f"plot = {json.dumps(plot)}\n\n"
        "[project.scripts]\n"
        'skscratch = "skscratch.cli:main"\n\n'
        "[tool.setuptools.packages.find]\n"
        'include = ["skscratch*"]\n\n'
        "[tool.setuptools.package-data]\n"
        f'"skscratch.assignment" = ["{VISIBLE}.npz", "{VISIBLE}.json"]\n'
    )


def _license() -> str:
    """skscratch's LICENSE: beside the package in a source tree, else from the installed
    distribution's metadata."""
    beside = PACKAGE.parent / "LICENSE"
    if beside.is_file():
        return beside.read_text()
    dist = importlib.metadata.distribution("skscratch")
    for name in ("licenses/LICENSE", "LICENSE"):
        text = dist.read_text(name)
        if text:
            return text
    raise AssignmentError("cannot find skscratch's LICENSE, which every copy must carry")
