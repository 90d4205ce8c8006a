"""Course assignments: a student copy of skscratch with functions to write, and its grader.

In the teaching modules the bodies that students write are fenced by `# BEGIN SOLUTION` and
`# END SOLUTION` comment lines (the hint comments just above a fence stay). `make` copies the
package and replaces each fenced body of the chosen exercises with a `raise NotImplementedError`
that names the exercise; everything else keeps working. `grade` runs each exercise's checks
on a copy, every exercise in its own process with a time limit, so that no student code can
crash or hang the grader: `_worker.py` is the script each process runs, `_references.py` holds
the independent NumPy references, `_compare.py` the comparisons and finite differences, and
`_checks_operations.py` and `_checks_gradient_checking.py` the checks of each exercise.

    python -m skscratch assignment make OUTDIR [--exercises conv,batchnorm,...]
    python -m skscratch assignment grade OUTDIR
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    points: int
    functions: tuple[tuple[str, str], ...]  # (module file inside the package, function)


EXERCISES = (
    Exercise(
        "im2col",
        "im2col and col2im",
        10,
        (("im2col.py", "im2col"), ("im2col.py", "col2im")),
    ),
    Exercise(
        "conv",
        "convolution forward and backward (grouped, strided, dilated)",
        15,
        (("conv.py", "conv2d_forward"), ("conv.py", "conv2d_backward")),
    ),
    Exercise(
        "batchnorm",
        "batch norm forward and backward",
        15,
        (("batchnorm.py", "batchnorm_forward"), ("batchnorm.py", "batchnorm_backward")),
    ),
    Exercise(
        "relu_pool_fc",
        "ReLU, global average pool and fully connected backward",
        10,
        (
            ("activations.py", "relu_backward"),
            ("pooling.py", "global_avg_pool_backward"),
            ("linear.py", "linear_backward"),
        ),
    ),
    Exercise(
        "branch_softmax",
        "the softmax across branches, forward and backward",
        10,
        (
            ("activations.py", "branch_softmax_forward"),
            ("activations.py", "branch_softmax_backward"),
        ),
    ),
    Exercise(
        "sk_unit",
        "the SK unit: Split, Fuse, Select, forward and backward",
        20,
        (("sk.py", "sk_unit_forward"), ("sk.py", "sk_unit_backward")),
    ),
    Exercise(
        "softmax_ce",
        "softmax cross-entropy",
        10,
        (("losses.py", "softmax_cross_entropy"),),
    ),
    Exercise(
        "gradient_checking",
        "gradient checking: centred differences, float32, a planted bug, the ReLU kink",
        10,
        (
            ("exercises/gradient_checking.py", "centred_difference"),
            ("exercises/gradient_checking.py", "best_float32_step"),
            ("exercises/gradient_checking.py", "find_the_planted_bug"),
            ("exercises/gradient_checking.py", "relu_kink_entries"),
        ),
    ),
)
BY_NAME = {e.name: e for e in EXERCISES}
TIME_LIMIT = 300  # seconds per exercise


STUB = '''"""Not part of a student copy: the grader stays with the instructor."""

raise ImportError("this is a student copy: the grader is not part of it")
'''


class AssignmentError(ValueError):
    """Something the instructor can fix: an unknown exercise, an occupied folder."""


def parse_exercises(text: str | None) -> list[Exercise]:
    """'conv,batchnorm' -> those exercises in course order; None or 'all' -> all of them."""
    if text is None or text == "all":
        return list(EXERCISES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise AssignmentError(
            f"unknown exercise {', '.join(unknown) or repr(text)}; choose from {', '.join(BY_NAME)}"
        )
    return [e for e in EXERCISES if e.name in names]


# -- the student copy ---------------------------------------------------------------------------


def fenced_bodies(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, enclosing function) of every fenced body, 0-based and inclusive
    of the marker lines."""
    lines = source.split("\n")
    found, start = [], None
    for i, line in enumerate(lines):
        if line.strip() == BEGIN:
            if start is not None:
                raise AssignmentError(f"line {i + 1}: {BEGIN} inside another fence")
            start = i
        elif line.strip() == END:
            if start is None:
                raise AssignmentError(f"line {i + 1}: {END} without {BEGIN}")
            found.append((start, i, _enclosing_function(lines, start)))
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


def make(outdir: str | Path, exercises: list[Exercise]) -> Path:
    """Write a student copy of the package to OUTDIR/skscratch, and OUTDIR/ASSIGNMENT.md.

    OUTDIR must not exist or be empty: nothing already there is overwritten. The grader itself
    (this subpackage) is not copied."""
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
        # The grader stays with the instructor; in its place, a module that says so (an empty
        # place would let an installed skscratch's grader answer the import instead).
        shutil.rmtree(staging / "skscratch" / "assignment")
        (staging / "skscratch" / "assignment").mkdir()
        (staging / "skscratch" / "assignment" / "__init__.py").write_text(STUB)
        for path in sorted((staging / "skscratch").rglob("*.py")):
            module = path.relative_to(staging / "skscratch").as_posix()
            source = path.read_text()
            if BEGIN in source:
                path.write_text(strip_solutions(source, by_file.get(module, {})))
        (staging / "ASSIGNMENT.md").write_text(assignment_text(exercises))
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            item.rename(out / item.name)
    except OSError as exc:
        raise AssignmentError(f"cannot write the student copy to {out}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def assignment_text(exercises: list[Exercise]) -> str:
    lines = [
        "# Assignment: Selective Kernel Networks from scratch",
        "",
        "The folder `skscratch/` is a working copy of skscratch in which some functions are yours",
        "to write. Each raises `NotImplementedError` naming its exercise; the comments above it",
        "say what it computes, and the module's docstring gives the mathematics. Everything else",
        "works already, and once your functions are right a network trains on them as it is.",
        "",
        "## Exercises, in order",
        "",
        "| exercise | what | points | functions |",
        "| --- | --- | --- | --- |",
    ]
    for e in exercises:
        functions = ", ".join(f"`{m}: {f}`" for m, f in e.functions)
        lines.append(f"| `{e.name}` | {e.title} | {e.points} | {functions} |")
    lines += [
        "",
        "## Your functions and the fast backend",
        "",
        "Your functions are skscratch's reference path: plain NumPy, one operation per module.",
        "Beside it, `skscratch/fast/` holds compiled versions of the convolution, batch norm,",
        "ReLU and SK unit, which skscratch's own tests check equal to the reference solution.",
        "A network runs one or the other, chosen where it is built:",
        '`SKResNeXt(config, backend="reference")` runs your functions end to end,',
        '`backend="fast"` the compiled ones in place of your convolution, batch norm, ReLU and',
        "SK unit (both use the same linear layer, pooling, branch softmax and loss: those are",
        "yours on either backend).",
        "",
        "## Checking your work",
        "",
        "From this folder,",
        "",
        "    python -m skscratch gradcheck --backend reference",
        "",
        "checks every one of your functions (the backward passes against finite differences) and",
        "names every exercise not written yet. Without `--backend` it checks the same functions,",
        "then the fast backend's.",
        "",
        "    python -m skscratch train --backend reference --model tiny --data PATH",
        "",
        "trains a small network on CIFAR-10 (PATH: `cifar-10-python.tar.gz` or its folder) on",
        "your functions end to end: if it learns, your convolution, batch norm, ReLU, SK unit,",
        "pooling, linear layer and loss work together. Plain NumPy is slow, hence the tiny model",
        "(`--subset N` and `--epochs N` shorten the run further). The default, `--backend fast`,",
        "runs the compiled versions of the convolution, batch norm, ReLU and SK unit, not yours:",
        "it trains the full model in reasonable time, and just as well whether or not you have",
        "written those four, which is why the reference backend exists.",
        "",
        "## Grading",
        "",
        "Your instructor runs `python -m skscratch assignment grade <this folder>`: for each",
        "exercise, forward passes against independent references and backward passes against",
        "finite differences, on shapes of its own. Only your functions are graded, never the",
        "fast backend. A function that raises, returns the wrong shape or NaN, or runs too long",
        "fails that check with the reason.",
        "",
    ]
    return "\n".join(lines)


# -- grading ------------------------------------------------------------------------------------


@dataclass
class Result:
    exercise: Exercise
    checks: list[dict]  # {"check", "passed", "reason"}

    @property
    def passed(self) -> int:
        return sum(c["passed"] for c in self.checks)

    @property
    def points(self) -> float:
        return self.exercise.points * self.passed / max(len(self.checks), 1)


def grade(
    outdir: str | Path, *, seed: int = 0, time_limit: int = TIME_LIMIT, check_seconds: int = 20
) -> list[Result]:
    """Run every exercise's checks on the student copy in OUTDIR; one Result per exercise.

    Each exercise runs in its own process, stopped after `time_limit` seconds; each check in it
    fails after `check_seconds`."""
    out = Path(outdir).resolve()
    if not (out / "skscratch" / "__init__.py").is_file():
        raise AssignmentError(f"{out} holds no student copy (no skscratch/__init__.py in it)")
    worker = Path(__file__).with_name("_worker.py")
    results = []
    # Without PYTHONSAFEPATH the worker's own folder is first on its path: it imports its
    # neighbours (_references.py, ...) from there.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    for e in EXERCISES:
        command = [sys.executable, str(worker), str(out), e.name, str(seed), str(check_seconds)]
        try:
            run = subprocess.run(
                command, capture_output=True, text=True, timeout=time_limit, env=env, cwd=out
            )
            checks = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
            if run.returncode and not checks:
                tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
                checks = [{"check": "import", "passed": False, "reason": tail[0]}]
        except subprocess.TimeoutExpired:
            checks = [{"check": "all", "passed": False, "reason": f"took over {time_limit} s"}]
        results.append(Result(e, checks))
    return results


def report(results: list[Result]) -> str:
    width = max(len(r.exercise.name) for r in results)
    lines = [f"{'exercise':<{width}}  checks  points"]
    for r in results:
        lines.append(
            f"{r.exercise.name:<{width}}  {r.passed:>2}/{len(r.checks):<3}  "
            f"{r.points:5.1f}/{r.exercise.points}"
        )
        lines += [
            f"{'':<{width}}    - {c['check']}: {c['reason']}" for c in r.checks if not c["passed"]
        ]
    total = sum(r.points for r in results)
    most = sum(r.exercise.points for r in results)
    lines.append(f"total: {total:.1f} of {most} points ({total / most:.0%})")
    return "\n".join(lines)
