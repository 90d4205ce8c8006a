"""Course assignments: the student copy, and the grader's verdicts on right, missing and wrong
student code.

Student code is planted by editing the copy's source text, as a student would; each edit is
checked to have happened, so a changed line in the package cannot silently void a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skscratch import assignment, cli
from skscratch.assignment import BEGIN, EXERCISES, PACKAGE, fenced_bodies


def _make(tmp_path: Path, name: str, exercises: str | None = None) -> Path:
    out = tmp_path / name
    args = ["assignment", "make", str(out)] + (["--exercises", exercises] if exercises else [])
    assert cli.main(args) == 0
    return out


def _plant(copy: Path, module: str, old: str, new: str) -> None:
    path = copy / "skscratch" / module
    source = path.read_text()
    assert old in source, f"{old!r} is not in {module}"
    path.write_text(source.replace(old, new))


def _run_in(copy: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose skscratch is the one in `copy`."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=copy,
        env=dict(os.environ, PYTHONPATH=str(copy), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scores(results) -> dict[str, tuple[int, int]]:
    return {r.exercise.name: (r.passed, len(r.checks)) for r in results}


def _reasons(results, exercise: str) -> list[str]:
    (result,) = [r for r in results if r.exercise.name == exercise]
    return [c["reason"] for c in result.checks if not c["passed"]]


def test_every_fenced_body_is_an_exercise_and_every_exercise_is_fenced():
    fenced = set()
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if BEGIN in source:
            module = path.relative_to(PACKAGE).as_posix()
            fenced |= {(module, function) for _, _, function in fenced_bodies(source)}
    assert fenced == {f for e in EXERCISES for f in e.functions}


def test_the_solution_scores_every_point(tmp_path):
    solution = tmp_path / "solution"
    shutil.copytree(PACKAGE, solution / "skscratch", ignore=shutil.ignore_patterns("__pycache__"))
    results = assignment.grade(solution)
    assert all(r.passed == len(r.checks) > 0 for r in results), assignment.report(results)
    assert "total: 100.0 of 100 points (100%)" in assignment.report(results)


def test_a_fresh_copy_imports_works_where_unfenced_and_scores_nothing(tmp_path, capsys):
    copy = _make(tmp_path, "class")
    guide = (copy / "ASSIGNMENT.md").read_text()
    assert all(f"| `{e.name}` | {e.title} | {e.points} |" in guide for e in EXERCISES)
    assert "python -m skscratch gradcheck --backend reference" in guide
    assert "python -m skscratch train --backend reference --model tiny --data PATH" in guide
    # The grader stays with the teacher.
    assert [p.name for p in (copy / "skscratch" / "assignment").iterdir()] == ["__init__.py"]
    for path in (copy / "skscratch").rglob("*.py"):
        assert "SOLUTION" not in path.read_text(), path
    # What is not an exercise still runs in the copy: the fast backend's direct convolution and
    # fused batch norm (as plain Python: which code runs is the question here, not how fast).
    code = (
        "import numpy as np; from skscratch import fast; "
        "x = np.ones((2, 4, 5, 5)); fast.conv2d_forward(x, np.ones((4, 2, 3, 3)), groups=2, "
        "padding=1, algorithm='direct'); fast.batchnorm_relu_forward(x, *np.ones((4, 4))); "
        "from skscratch.losses import softmax_cross_entropy; "
        "softmax_cross_entropy(np.ones((1, 2)), np.zeros(1, int))"
    )
    run = _run_in(copy, code, NUMBA_DISABLE_JIT="1")
    assert run.returncode == 1, run.stderr
    assert "NotImplementedError: exercise softmax_ce: write this part of softmax_cross_entropy" in (
        run.stderr
    )

    assert cli.main(["assignment", "grade", str(copy)]) == 1
    printed = capsys.readouterr().out
    assert "total: 0.0 of 100 points (0%)" in printed
    results = assignment.grade(copy)
    for r in results:
        assert r.passed == 0 and r.checks, r.exercise.name
        assert all("not written yet" in c["reason"] for c in r.checks), r.checks


def test_round_trip_one_exercise_filled_in_scores_exactly_that_exercise(tmp_path, capsys):
    copy = _make(tmp_path, "student")
    assert cli.main(["assignment", "grade", str(copy)]) == 1
    capsys.readouterr()
    # The student writes softmax_cross_entropy: here, the solution's file.
    shutil.copy(PACKAGE / "losses.py", copy / "skscratch" / "losses.py")
    assert cli.main(["assignment", "grade", str(copy)]) == 1  # the rest still fails
    printed = capsys.readouterr().out
    assert "total: 10.0 of 100 points (10%)" in printed
    scores = _scores(assignment.grade(copy))
    assert scores.pop("softmax_ce") == (1, 1)
    assert all(passed == 0 for passed, _ in scores.values()), scores


def test_a_copy_with_other_exercises_scores_exactly_the_ones_left_as_solutions(tmp_path):
    copy = _make(tmp_path, "part", "conv,sk_unit,gradient_checking")
    scores = _scores(assignment.grade(copy))
    assert {name for name, (passed, total) in scores.items() if passed == total} == {
        "im2col",
        "batchnorm",
        "relu_pool_fc",
        "branch_softmax",
        "softmax_ce",
    }
    assert scores["conv"][0] == scores["sk_unit"][0] == scores["gradient_checking"][0] == 0


def test_batch_norm_backward_without_the_mean_term_fails_on_dx(tmp_path):
    copy = _make(tmp_path, "bug", "softmax_ce")
    _plant(
        copy,
        "batchnorm.py",
        "(dxhat - mean_dxhat - xhat * mean_dxhat_xhat)",
        "(dxhat - xhat * mean_dxhat_xhat)",
    )
    results = assignment.grade(copy)
    scores = _scores(results)
    assert scores["batchnorm"] == (1, 2)  # the forward is right
    (reason,) = _reasons(results, "batchnorm")
    assert reason.startswith("dx of batchnorm_backward, training")
    assert "against finite differences" in reason


def test_broken_student_functions_fail_with_readable_reasons(tmp_path):
    copy = _make(tmp_path, "broken", "softmax_ce")  # everything else is the solution
    _plant(
        copy,
        "activations.py",
        "return np.where(cache.out > 0, dout, 0).astype(dout.dtype)",
        "raise ValueError('oops')",
    )
    # An im2col that hands its work to the compiled backend: the grader does not let it.
    _plant(
        copy,
        "im2col.py",
        "    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))\n",
        "    from skscratch.fast import im2col as compiled\n\n"
        "    return compiled(x, kh, kw, stride=stride, padding=padding, dilation=dilation)\n",
    )
    _plant(
        copy,
        "pooling.py",
        "return np.broadcast_to((dout * scale)[:, :, None, None], cache.x_shape).copy()",
        "return dout * scale",
    )
    _plant(copy, "linear.py", "dx = dout @ w", "dx = dout @ w * float('nan')")
    _plant(
        copy,
        "losses.py",
        "raise NotImplementedError(",
        "while True:\n        pass\n    raise NotImplementedError(",
    )
    _plant(
        copy,
        "exercises/gradient_checking.py",
        "grad[i] = (plus - minus) / (2 * h)",
        "grad[i] = (plus - minus) / h",
    )
    results = assignment.grade(copy, check_seconds=1)
    relu, pool, fc = _reasons(results, "relu_pool_fc")
    assert relu.startswith("raised ValueError: oops (activations.py, line")
    assert pool == "global_avg_pool_backward: shape (2, 3), expected (2, 3, 4, 5)"
    assert fc == "dx of linear_backward: contains NaN or inf"
    assert _reasons(results, "softmax_ce") == ["took longer than 1 s"]
    (reason,) = _reasons(results, "im2col")
    assert reason.startswith("raised ImportError: skscratch.fast is not available in the grader")
    (checks,) = [r.checks for r in results if r.exercise.name == "gradient_checking"]
    verdicts = {c["check"]: c for c in checks}
    assert verdicts["centred difference"]["reason"].startswith(
        "centred_difference of sum(sin(x) * x^2): relative error"
    )
    assert verdicts["float32 step"]["passed"] and verdicts["ReLU kink"]["passed"]


def test_make_refuses_an_occupied_folder_and_unknown_exercises(tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert cli.main(["assignment", "make", str(occupied)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    assert (occupied / "notes.txt").read_text() == "mine"

    assert cli.main(["assignment", "make", str(tmp_path / "new"), "--exercises", "conv,cnn"]) == 2
    err = capsys.readouterr().err
    assert "unknown exercise cnn; choose from im2col, conv," in err
    assert not (tmp_path / "new").exists()


def test_grade_refuses_a_folder_without_a_student_copy(tmp_path, capsys):
    assert cli.main(["assignment", "grade", str(tmp_path)]) == 2
    assert "holds no student copy" in capsys.readouterr().err


def test_a_student_copy_has_no_grader(tmp_path):
    copy = _make(tmp_path, "nograder", "softmax_ce")
    run = subprocess.run(
        [sys.executable, "-m", "skscratch", "assignment", "grade", "."],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "this is a student copy: the grader is not part of it" in run.stderr


@pytest.mark.parametrize("exercise", [e.name for e in EXERCISES])
def test_every_exercise_alone_makes_a_copy_that_fails_only_there(tmp_path, exercise):
    copy = _make(tmp_path, exercise, exercise)
    text = "\n".join(p.read_text() for p in (copy / "skscratch").rglob("*.py"))
    assert text.count(f"raise NotImplementedError('exercise {exercise}: ") == len(
        assignment.BY_NAME[exercise].functions
    )
    assert text.count("raise NotImplementedError('exercise ") == len(
        assignment.BY_NAME[exercise].functions
    )


def test_a_network_on_the_reference_backend_runs_the_students_functions(tmp_path):
    """The reference backend runs the student's convolution; the fast backend runs its own."""
    copy = _make(tmp_path, "backends", "conv")
    code = textwrap.dedent(
        f"""
        import numpy as np
        import skscratch
        from skscratch.models import PRESETS, SKResNeXt

        assert skscratch.__file__.startswith({str(copy)!r}), skscratch.__file__
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        print(SKResNeXt(PRESETS["tiny"], backend="fast")(x).shape)
        SKResNeXt(PRESETS["tiny"], backend="reference")(x)
        """
    )
    # Plain Python kernels: which functions run is the question here, not how fast.
    run = _run_in(copy, code, NUMBA_DISABLE_JIT="1")
    assert run.returncode == 1, run.stderr
    assert run.stdout == "(2, 10)\n"
    assert run.stderr.strip().splitlines()[-1] == (
        "NotImplementedError: exercise conv: write this part of conv2d_forward"
    )
