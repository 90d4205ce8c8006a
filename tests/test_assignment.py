"""Course assignments: the student copy, its visible checks, and the grader's verdicts on right,
missing, wrong and forging student code.

Student code is planted by editing the copy's source text, as a student would; each edit is
checked to have happened, so a changed line in the package cannot silently void a test. The
hidden cases are built once for the module (the references' finite differences take seconds).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from skscratch import assignment, cli
from skscratch.assignment import EXERCISES, _cases, fenced_bodies
from skscratch.assignment.student_copy import BEGIN, PACKAGE

ROOT = PACKAGE.parent


@pytest.fixture(scope="module")
def cases():
    return assignment.hidden_cases(list(EXERCISES), seed=0)


def _make(tmp_path: Path, name: str, exercises: str | None = None) -> Path:
    out = tmp_path / name
    args = ["assignment", "make", str(out)] + (["--exercises", exercises] if exercises else [])
    assert cli.main(args) == 0
    return out


def _solution(tmp_path: Path, name: str = "solution") -> Path:
    """A folder holding skscratch itself: every function written, no manifest."""
    out = tmp_path / name
    shutil.copytree(PACKAGE, out / "skscratch", ignore=shutil.ignore_patterns("__pycache__"))
    return out


def _plant(copy: Path, module: str, old: str, new: str) -> None:
    path = copy / "skscratch" / module
    source = path.read_text()
    assert old in source, f"{old!r} is not in {module}"
    path.write_text(source.replace(old, new))


def _run_in(copy: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run Python with `args` in `copy`, whose skscratch is the copy's."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=copy,
        env=dict(os.environ, PYTHONPATH=str(copy), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _points(grade) -> dict[str, float]:
    return {e.name: grade.of(e.name)[0] for e in grade.exercises}


def _reasons(grade, exercise: str, check: str) -> list[str]:
    (result,) = [c for c in grade.checks if (c.exercise, c.check) == (exercise, check)]
    return result.reasons


# ------------------------------------------------------------------------------ the exercises


def test_every_fenced_body_is_an_exercise_and_every_exercise_is_fenced():
    fenced = set()
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if BEGIN in source:
            module = path.relative_to(PACKAGE).as_posix()
            fenced |= {(module, function) for _, _, function in fenced_bodies(source)}
    assert fenced == {f for e in EXERCISES for f in e.functions}


def test_every_exercise_has_visible_and_hidden_cases_of_exactly_its_checks(cases):
    points = assignment.load_points()
    assert sum(sum(p.values()) for p in points.values()) == 100
    for e in EXERCISES:
        visible = _cases.build(e.name, 0, hidden=False)
        hidden = cases[e.name]
        assert {c.check for c in visible} == {c.check for c in hidden} == set(e.checks)
        # Hidden cases differ from the visible ones: other inputs, and mostly other shapes.
        for v, h in zip(visible, hidden, strict=False):
            assert (
                any(
                    np.shape(v.inputs.get(k)) != np.shape(h.inputs[k])
                    or not np.array_equal(v.inputs.get(k), h.inputs[k])
                    for k in h.inputs
                )
                or not h.inputs
            ), (e.name, v.what)
        for case in hidden:
            assert set(case.source) == set(case.expected) - {
                k for k, (rule, _) in case.expected.items() if rule == "none"
            }


def test_small_tensors_are_checked_whole_and_large_ones_at_a_sample(cases):
    (case,) = [c for c in cases["relu_pool_fc"] if c.check == "FC backward"]
    for name in ("dx", "dw", "db"):
        rule, value = case.expected[name]
        assert rule == "close" and not np.isnan(value).any()  # every entry
    big = _cases.numeric_gradient(
        lambda v: v * 2.0, np.zeros(_cases.FULL + 100), np.ones(_cases.FULL + 100),
        np.random.default_rng(0),
    )  # fmt: skip
    assert np.count_nonzero(~np.isnan(big)) == _cases.FULL
    np.testing.assert_allclose(big[~np.isnan(big)], 2.0)


def test_the_points_table_must_name_every_check(tmp_path):
    table = assignment.load_points()
    del table["conv"]["forward"]
    path = tmp_path / "points.json"
    path.write_text(json.dumps(table))
    with pytest.raises(assignment.AssignmentError, match="'conv' must give points to exactly"):
        assignment.load_points(path)
    table = assignment.load_points() | {"extra": {}}
    path.write_text(json.dumps(table))
    with pytest.raises(assignment.AssignmentError, match="unknown exercises"):
        assignment.load_points(path)


# ------------------------------------------------------------------------------ grading


def test_the_solution_scores_every_point(tmp_path, cases):
    grade = assignment.grade(_solution(tmp_path), cases=cases)
    assert all(c.passed == c.total > 0 for c in grade.checks), assignment.report(grade)
    assert "total: 100.0 of 100 points (100%)" in assignment.report(grade)


def test_a_fresh_copy_imports_works_where_unfenced_and_scores_nothing(tmp_path, capsys, cases):
    copy = _make(tmp_path, "class")
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
    run = _run_in(copy, "-c", code, NUMBA_DISABLE_JIT="1")
    assert run.returncode == 1, run.stderr
    assert "NotImplementedError: exercise softmax_ce: write this part of softmax_cross_entropy" in (
        run.stderr
    )
    grade = assignment.grade(copy, cases=cases)
    assert "total: 0.0 of 100 points (0%)" in assignment.report(grade)
    for c in grade.checks:
        assert c.passed == 0 and c.total > 0, (c.exercise, c.check)
        assert all("not written yet" in r for r in c.reasons), c.reasons


def test_round_trip_one_exercise_filled_in_scores_exactly_that_exercise(tmp_path, cases):
    copy = _make(tmp_path, "student")
    shutil.copy(PACKAGE / "losses.py", copy / "skscratch" / "losses.py")  # the student's work
    grade = assignment.grade(copy, cases=cases)
    assert "total: 10.0 of 100 points (10%)" in assignment.report(grade)
    points = _points(grade)
    assert points.pop("softmax_ce") == 10
    assert not any(points.values()), points


def test_a_partial_copy_is_totalled_out_of_its_own_exercises(tmp_path, capsys, cases):
    copy = _make(tmp_path, "part", "conv,batchnorm")
    assert json.loads((copy / "assignment.json").read_text()) == {
        "exercises": ["conv", "batchnorm"]
    }
    grade = assignment.grade(copy, cases=cases)
    assert [e.name for e in grade.exercises] == ["conv", "batchnorm"]
    assert grade.points == 0 and grade.max_points == 30
    # The instructor may name the exercises instead: the others hold the solutions.
    chosen = assignment.parse_exercises("conv,softmax_ce")
    grade = assignment.grade(copy, exercises=chosen, cases=cases)
    assert (grade.points, grade.max_points) == (10, 25)
    # Without a manifest, every exercise.
    (copy / "assignment.json").unlink()
    assert assignment.grade(copy, cases=cases).max_points == 100


def test_batch_norm_backward_without_the_mean_term_fails_in_training_only(tmp_path, cases):
    copy = _make(tmp_path, "bug", "softmax_ce")
    _plant(
        copy,
        "batchnorm.py",
        "(dxhat - mean_dxhat - xhat * mean_dxhat_xhat)",
        "(dxhat - xhat * mean_dxhat_xhat)",
    )
    grade = assignment.grade(copy, exercises=assignment.parse_exercises("batchnorm"), cases=cases)
    assert grade.points == 15 - 5  # all but the training backward
    reasons = _reasons(grade, "batchnorm", "backward, training")
    assert len(reasons) == 2
    assert all("dx is wrong" in r and "against finite differences of the reference" in r
               for r in reasons)  # fmt: skip
    assert not _reasons(grade, "batchnorm", "backward, evaluation")


def test_broken_student_functions_fail_with_readable_reasons(tmp_path, cases):
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
    grade = assignment.grade(copy, exercises=list(EXERCISES), cases=cases, case_seconds=1)
    (relu,) = _reasons(grade, "relu_pool_fc", "ReLU backward")
    assert relu.startswith("relu_backward, x (2, 3, 4): raised ValueError: oops (activations.py")
    (pool,) = _reasons(grade, "relu_pool_fc", "pool backward")
    assert pool.endswith("dx: shape (3, 2), expected (3, 2, 3, 3)")
    (fc,) = _reasons(grade, "relu_pool_fc", "FC backward")
    assert fc.endswith("dx: contains NaN or inf")
    reasons = _reasons(grade, "softmax_ce", "loss and gradient")
    assert len(reasons) == 2 and all(r.endswith("took longer than 1 s") for r in reasons)
    for reason in _reasons(grade, "im2col", "im2col"):
        assert "raised ImportError: skscratch.fast is not available in the grader" in reason
    (centred,) = _reasons(grade, "gradient_checking", "centred difference")
    assert centred.startswith("centred_difference of sum(sin(x) * x^2): grad is wrong")
    assert not _reasons(grade, "gradient_checking", "float32 step")


def test_a_runaway_allocation_fails_its_case_and_the_rest_run(tmp_path, cases):
    copy = _make(tmp_path, "greedy", "softmax_ce")
    _plant(copy, "losses.py", "raise NotImplementedError(",
           "np.ones(2**40)\n    raise NotImplementedError(")  # fmt: skip
    grade = assignment.grade(copy, exercises=assignment.parse_exercises("softmax_ce,conv"),
                             cases=cases, memory_mib=1024)  # fmt: skip
    reasons = _reasons(grade, "softmax_ce", "loss and gradient")
    assert len(reasons) == 2 and all("raised MemoryError" in r for r in reasons), reasons
    assert grade.of("conv") == (15, 15)


def test_what_the_students_code_starts_is_stopped_with_its_worker(tmp_path, cases):
    copy = _make(tmp_path, "spawner", "softmax_ce")
    marker = tmp_path / "still-running"
    child = f"import time; time.sleep(4); open({str(marker)!r}, 'w').write('x')"
    _plant(copy, "losses.py", "from skscratch._checks import",
           f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
           "from skscratch._checks import")  # fmt: skip
    grade = assignment.grade(copy, cases=cases)
    assert grade.points == 0
    time.sleep(6)
    assert not marker.exists()


# Each plants code that runs when the student's losses.py is imported (or when its function is
# called) into a copy whose softmax_cross_entropy is unwritten.
FORGED = '{"check": "loss and gradient", "passed": true, "reason": ""}'
FORGERIES = {
    "JSON lines printed on import": f"for _ in range(50):\n    print({FORGED!r})\n",
    "writes straight to file descriptor 1": (
        f"import os\nfor _ in range(50):\n    os.write(1, {(FORGED + chr(10)).encode()!r})\n"
    ),
    "os._exit(0) after printing": f"import os\nprint({FORGED!r}, flush=True)\nos._exit(0)\n",
    "patching NumPy from the student module": (
        "np.allclose = lambda *a, **k: True\n"
        "np.array_equal = lambda *a, **k: True\n"
        "np.isfinite = lambda x: np.ones(np.shape(x), bool)\n"
        "np.testing.assert_allclose = lambda *a, **k: None\n"
    ),
    "raising SystemExit on import": "raise SystemExit(0)\n",
    "writing result files where the worker writes": (
        "import json, sys\n"
        "from pathlib import Path\n"
        "out = Path(sys.argv[3]) if len(sys.argv) > 3 else None\n"
        "if out and out.is_dir():\n"
        "    for i in range(4):\n"
        "        (out / f'{i}.json').write_text(json.dumps({'none': [], 'error': None}))\n"
        "        np.savez(out / f'{i}.npz', loss=np.float64(0), dlogits=np.zeros(1))\n"
        "    (out / 'passed.json').write_text('true')\n"
    ),
}


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_results_score_nothing(tmp_path, cases, how):
    copy = _make(tmp_path, "forger", "softmax_ce")
    _plant(copy, "losses.py", "from skscratch._checks import",
           FORGERIES[how] + "from skscratch._checks import")  # fmt: skip
    grade = assignment.grade(copy, cases=cases)
    assert [e.name for e in grade.exercises] == ["softmax_ce"]
    assert grade.points == 0, assignment.report(grade)


def test_results_json_has_gradescopes_fields(tmp_path, capsys):
    copy = _make(tmp_path, "gs", "relu_pool_fc")
    shutil.copy(PACKAGE / "pooling.py", copy / "skscratch" / "pooling.py")
    out = tmp_path / "results.json"
    assert cli.main(["assignment", "grade", str(copy), "--json", str(out)]) == 1
    results = json.loads(out.read_text())
    assert results["score"] == 3
    assert len(results["tests"]) == 3
    for test in results["tests"]:
        assert {"name", "score", "max_score", "output", "visibility"} <= set(test)
        assert test["visibility"] in ("visible", "hidden", "after_due_date", "after_published")
    pool = [t for t in results["tests"] if t["name"] == "relu_pool_fc: pool backward"]
    assert pool[0]["score"] == pool[0]["max_score"] == 3
    relu = [t for t in results["tests"] if t["name"] == "relu_pool_fc: ReLU backward"][0]
    assert relu["score"] == 0 and "not written yet" in relu["output"]
    assert "wrote" in capsys.readouterr().out


def test_grading_a_folder_writes_one_row_per_submission(tmp_path, capsys):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    _solution(submissions, "ada")
    _make(submissions, "bob", "batchnorm")  # handed in as it came
    carol = _make(submissions, "carol", "batchnorm")
    shutil.copy(PACKAGE / "batchnorm.py", carol / "skscratch" / "batchnorm.py")
    _plant(carol, "batchnorm.py", "(dxhat - mean_dxhat - xhat * mean_dxhat_xhat)",
           "(dxhat - xhat * mean_dxhat_xhat)")  # fmt: skip
    (submissions / "dan").mkdir()  # an empty hand-in
    out = tmp_path / "grades.csv"
    args = ["assignment", "grade-all", str(submissions), "--csv", str(out)]
    assert cli.main(args) == 0
    rows = {row["submission"]: row for row in csv.DictReader(out.open())}
    assert list(rows) == ["ada", "bob", "carol", "dan"]
    assert (rows["ada"]["points"], rows["ada"]["max_points"]) == ("100.0", "100")
    assert (rows["bob"]["points"], rows["bob"]["max_points"]) == ("0.0", "15")
    assert (rows["carol"]["points"], rows["carol"]["batchnorm"]) == ("10.0", "10.0")
    assert rows["carol"]["conv"] == ""  # not part of carol's assignment
    assert rows["carol"]["exercises"] == "batchnorm"
    assert "holds no student copy" in rows["dan"]["error"] and rows["dan"]["points"] == ""
    printed = capsys.readouterr().out
    assert "carol: 10.0 of 15" in printed and "dan: " in printed


# ------------------------------------------------------------------ the student's side


def test_check_runs_the_visible_checks_in_the_copy(tmp_path):
    copy = _make(tmp_path, "checker", "batchnorm")
    run = _run_in(copy, "-m", "skscratch", "assignment", "check")
    assert run.returncode == 1
    assert "batchnorm: batch norm forward and backward" in run.stdout
    assert "not written yet (exercise batchnorm: write this part of batchnorm_forward)" in (
        run.stdout
    )
    assert "8 visible checks fail" in run.stdout

    # A forward pass shifted by one, whose backward pass is consistent with it (a constant
    # shift changes no gradient): a gradient check passes it, the visible checks do not.
    shutil.copy(PACKAGE / "batchnorm.py", copy / "skscratch" / "batchnorm.py")
    _plant(copy, "batchnorm.py", "* xhat + _per_channel(params[\"beta\"], x.ndim)",
           "* xhat + _per_channel(params[\"beta\"], x.ndim) + 1")  # fmt: skip
    run = _run_in(copy, "-m", "skscratch", "gradcheck", "--backend", "reference")
    assert run.returncode == 0, run.stdout[-2000:]
    run = _run_in(copy, "-m", "skscratch", "assignment", "check", "batchnorm")
    assert run.returncode == 1
    assert "out is wrong: relative error" in run.stdout
    assert "-> backward, training: 2 of 2 passed" in run.stdout

    shutil.copy(PACKAGE / "batchnorm.py", copy / "skscratch" / "batchnorm.py")
    run = _run_in(copy, "-m", "skscratch", "assignment", "check")
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("all visible checks pass")


def test_a_student_copy_is_installable_and_has_no_grader(tmp_path):
    copy = _make(tmp_path, "installable", "softmax_ce")
    assert sorted(p.name for p in (copy / "skscratch" / "assignment").iterdir()) == [
        "__init__.py", "_casefile.py", "_compare.py", "_programs.py", "catalog.py",
        "student.py", "visible.json", "visible.npz",
    ]  # fmt: skip
    assert (copy / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    guide = (copy / "ASSIGNMENT.md").read_text()
    assert "| `softmax_ce` | softmax cross-entropy, with label smoothing | 10 |" in guide
    for command in ("pip install -e '.[plot]'", "python -m skscratch assignment check",
                    "python -m skscratch gradcheck --backend reference"):  # fmt: skip
        assert command in guide
    tomllib = pytest.importorskip("tomllib", reason="tomllib is standard from Python 3.11 on")
    project = tomllib.loads((copy / "pyproject.toml").read_text())["project"]
    assert project["name"] == "skscratch" and project["license"] == "MIT"
    assert any(d.startswith("numpy") for d in project["dependencies"])

    run = _run_in(copy, "-m", "skscratch", "assignment", "grade", ".")
    assert run.returncode == 2
    assert "is for instructors: a student copy has no grader" in run.stderr


def test_the_copys_tutorials_run_on_its_functions_and_stop_at_the_first_unwritten(tmp_path):
    copy = _make(tmp_path, "course")
    chapters = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
    assert sorted(p.name for p in (copy / "tutorials").iterdir()) == [p.name for p in chapters]
    for path in chapters:
        mine = (copy / "tutorials" / path.name).read_text()
        assert "SOLUTION" not in mine, path.name
        # Every fenced answer is gone, a line that says where the answer goes in its place.
        answers = path.read_text().count("# BEGIN SOLUTION")
        assert mine.count(f"{path.stem}: write your answer to this exercise") == answers
    assert (
        "python tutorials/03_convolution_loops_to_im2col.py" in (copy / "ASSIGNMENT.md").read_text()
    )

    # Nothing written yet: the chapter stops at the first function it needs, naming the exercise.
    chapter = "tutorials/03_convolution_loops_to_im2col.py"
    run = _run_in(copy, chapter, SKSCRATCH_FIGURES=str(tmp_path / "figures"))
    assert run.returncode == 1
    assert re.search(r"exercise (im2col|conv)\b", run.stdout + run.stderr), run.stderr[-2000:]
    # Every function written (here: the solutions copied in), it runs to its closing exercises.
    for module in ("im2col.py", "conv.py"):
        shutil.copy(PACKAGE / module, copy / "skscratch" / module)
    run = _run_in(copy, chapter, SKSCRATCH_FIGURES=str(tmp_path / "figures"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "NotImplementedError: 03_convolution_loops_to_im2col: write your answer to this exercise "
        "in place of this line"
    ), run.stderr[-2000:]


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
    run = _run_in(copy, "-c", code, NUMBA_DISABLE_JIT="1")
    assert run.returncode == 1, run.stderr
    assert run.stdout == "(2, 10)\n"
    assert run.stderr.strip().splitlines()[-1] == (
        "NotImplementedError: exercise conv: write this part of conv2d_forward"
    )
