"""Grading: the hidden checks of every exercise against a student copy, and what they are worth.

For each exercise the grader builds its hidden cases here, with the expected values worked out
from `_references.py` in this process, and hands only their inputs to a worker process that
runs the student's code under a time and a memory limit (`_worker.py`). The worker writes what
the student's functions returned; this process compares it with the expected values and alone
decides what passes. So nothing the student's code prints, writes or exits with can make a
check pass: only results equal to the expected ones can. The grader accepts exactly the cases
it built: a case with no result fails, and a results folder holding anything else fails them
all.

A check (conv's "backward", ...) holds several cases; it earns its points from the points table
(points.json, or the instructor's own with --points) in proportion to the cases passed.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from skscratch.assignment import _cases
from skscratch.assignment._casefile import read_result, write_cases
from skscratch.assignment._compare import judge
from skscratch.assignment.catalog import (
    BY_NAME,
    EXERCISES,
    AssignmentError,
    Exercise,
    manifest_exercises,
)

HERE = Path(__file__).resolve().parent
TIME_LIMIT = 600  # seconds per exercise
CASE_SECONDS = 60  # seconds per case
MEMORY_MIB = 4096  # address space of a worker


@dataclass
class CheckResult:
    exercise: str
    check: str
    max_points: float
    passed: int = 0
    total: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def points(self) -> float:
        return self.max_points * self.passed / self.total if self.total else 0.0


@dataclass
class Grade:
    copy: Path
    exercises: list[Exercise]
    checks: list[CheckResult]

    @property
    def points(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_points(self) -> float:
        return sum(c.max_points for c in self.checks)

    def of(self, exercise: str) -> tuple[float, float]:
        mine = [c for c in self.checks if c.exercise == exercise]
        return sum(c.points for c in mine), sum(c.max_points for c in mine)


def load_points(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The points of every check: {exercise: {check: points}}, from `path` or points.json.
    Every exercise and check must be there, and nothing else."""
    source = Path(path) if path else HERE / "points.json"
    try:
        table = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise AssignmentError(f"cannot read the points table {source}: {exc}") from exc
    for e in EXERCISES:
        given = table.get(e.name)
        if not isinstance(given, dict) or set(given) != set(e.checks):
            raise AssignmentError(
                f"{source}: exercise {e.name!r} must give points to exactly its checks "
                f"{list(e.checks)}, got {given!r}"
            )
        for check, value in given.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise AssignmentError(f"{source}: {e.name} {check!r}: {value!r} is not points")
    unknown = set(table) - set(BY_NAME)
    if unknown:
        raise AssignmentError(f"{source}: unknown exercises {sorted(unknown)}")
    return table


def hidden_cases(exercises: list[Exercise], seed: int) -> dict[str, list[_cases.Case]]:
    """The hidden cases of each exercise for `seed`: built once, for as many copies as needed."""
    return {e.name: _cases.build(e.name, seed, hidden=True) for e in exercises}


def _limit_memory(mib: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, mib * 2**20))

    return apply


def run_cases(
    copy: Path, cases: list, *, time_limit: int, memory_mib: int, case_seconds: int = CASE_SECONDS
) -> list[str | None]:
    """Run `cases` on the copy in a worker process; return each case's failure reason (None
    where it passes)."""
    work = Path(tempfile.mkdtemp(prefix="skscratch-grade-"))
    try:
        write_cases(work / "cases", cases, expected=False)
        results = work / "results"
        results.mkdir()
        stderr = work / "stderr"
        # Without PYTHONSAFEPATH the worker's own folder is first on its path: it imports its
        # neighbours (_programs.py, ...) from there. One BLAS thread: the small cases need no
        # more, and a BLAS library reserves address space per thread, which the memory limit
        # counts (on a machine of many cores, enough to fail importing NumPy).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
        env |= {
            name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        }
        command = [sys.executable, str(HERE / "_worker.py"), str(copy), str(work / "cases"),
                   str(results), str(case_seconds)]  # fmt: skip
        stopped = None
        with open(stderr, "w") as err:
            # A session of its own: whatever the student's code starts is stopped with it.
            worker = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=env, cwd=copy, start_new_session=True,
                preexec_fn=_limit_memory(memory_mib),
            )  # fmt: skip
            try:
                if worker.wait(timeout=time_limit):
                    stopped = f"the process ended with status {worker.returncode}"
            except subprocess.TimeoutExpired:
                stopped = f"the exercise took over {time_limit} s"
            finally:
                try:
                    os.killpg(worker.pid, signal.SIGKILL)
                except ProcessLookupError:  # the whole group has ended already
                    pass
                worker.wait()
        expected_files = {f"{i}.{ext}" for i in range(len(cases)) for ext in ("npz", "json")}
        planted = sorted({p.name for p in results.iterdir()} - expected_files)
        if planted:
            return [f"the results folder holds files no check wrote: {planted[:3]}"] * len(cases)
        tail = _last_line(stderr)
        reasons = []
        for i, case in enumerate(cases):
            result = read_result(results, i)
            if result is None:
                why = stopped or "the process stopped"
                reasons.append(f"no result: {why}" + (f" ({tail})" if tail else ""))
                continue
            got, error = result
            reasons.append(error or judge(got, case.expected, case.source))
        return reasons
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _last_line(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 2000))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


def grade(
    copy: str | Path,
    *,
    exercises: list[Exercise] | None = None,
    seed: int = 0,
    points: dict | None = None,
    cases: dict[str, list] | None = None,
    time_limit: int = TIME_LIMIT,
    memory_mib: int = MEMORY_MIB,
    case_seconds: int = CASE_SECONDS,
) -> Grade:
    """Grade the student copy in `copy` on `exercises` (default: those of its manifest) with
    the hidden cases of `seed` (or `cases`, from hidden_cases), each exercise in its own worker
    process, under a time limit per exercise and per case and a memory limit."""
    copy = Path(copy).resolve()
    if not (copy / "skscratch" / "__init__.py").is_file():
        raise AssignmentError(f"{copy} holds no student copy (no skscratch/__init__.py in it)")
    exercises = exercises if exercises is not None else manifest_exercises(copy)
    points = points or load_points()
    cases = cases or hidden_cases(exercises, seed)
    checks = []
    for e in exercises:
        mine = {name: CheckResult(e.name, name, points[e.name][name]) for name in e.checks}
        reasons = run_cases(copy, cases[e.name], time_limit=time_limit, memory_mib=memory_mib,
                            case_seconds=case_seconds)  # fmt: skip
        for case, reason in zip(cases[e.name], reasons, strict=True):
            result = mine[case.check]
            result.total += 1
            if reason is None:
                result.passed += 1
            else:
                result.reasons.append(f"{case.what}: {reason}")
        checks += mine.values()
    return Grade(copy, exercises, checks)


def report(grade: Grade) -> str:
    """The grade as a table for people: every check, its points and why it failed."""
    width = max(len(f"{c.exercise}: {c.check}") for c in grade.checks)
    lines = [f"{'check':<{width}}  cases   points"]
    for c in grade.checks:
        lines.append(
            f"{c.exercise + ': ' + c.check:<{width}}  {c.passed:>2}/{c.total:<3}  "
            f"{c.points:5.1f}/{c.max_points:g}"
        )
        lines += [f"{'':<4}- {reason}" for reason in c.reasons]
    lines.append(
        f"total: {grade.points:.1f} of {grade.max_points:g} points "
        f"({grade.points / grade.max_points:.0%}), exercises: "
        + ", ".join(e.name for e in grade.exercises)
    )
    return "\n".join(lines)


def gradescope(grade: Grade, visibility: str = "after_published") -> dict:
    """Gradescope's autograder results.json: one test per check (name, score, max_score,
    output, visibility) and the total score."""
    tests = [
        {
            "name": f"{c.exercise}: {c.check}",
            "number": str(k),
            "score": round(c.points, 4),
            "max_score": c.max_points,
            "output": f"{c.passed} of {c.total} cases passed"
            + "".join(f"\n- {reason}" for reason in c.reasons),
            "visibility": visibility,
        }
        for k, c in enumerate(grade.checks, start=1)
    ]
    return {
        "score": round(grade.points, 4),
        "output": f"{grade.points:.1f} of {grade.max_points:g} points",
        "visibility": visibility,
        "tests": tests,
    }


def grade_folder(folder: str | Path, csv_path: str | Path, *, exercises: list[Exercise] | None,
                 seed: int = 0, points: dict | None = None, **limits) -> list[dict]:  # fmt: skip
    """Grade every submission (each a folder holding a student copy) in `folder`, and write one
    CSV row per submission: its name, total, maximum, the exercises graded and the points of
    each, or the error that kept it from being graded. One bad submission never stops the
    rest."""
    folder = Path(folder)
    submissions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not submissions:
        raise AssignmentError(f"{folder} holds no submission folders")
    points = points or load_points()
    everything = exercises or list(EXERCISES)
    cases = hidden_cases(everything, seed)
    rows = []
    for sub in submissions:
        row: dict = {"submission": sub.name}
        try:
            result = grade(sub, exercises=exercises, points=points, cases=cases, **limits)
        except AssignmentError as exc:
            row["error"] = str(exc)
        else:
            row |= {
                "points": round(result.points, 4),
                "max_points": result.max_points,
                # what was graded: a manifest edited to leave exercises out shows here
                "exercises": " ".join(e.name for e in result.exercises),
            }
            for e in result.exercises:
                row[e.name] = round(result.of(e.name)[0], 4)
        rows.append(row)
    columns = ["submission", "points", "max_points", "exercises", *(e.name for e in everything),
               "error"]  # fmt: skip
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows
