"""`check_all_operations` (what `skscratch gradcheck` runs) checks what students write: every
reference pair, then the fast pairs against finite differences and against the reference.

In a student copy it must name every exercise whose function is not written yet, and pass an
exercise once its functions are there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skscratch.assignment import EXERCISES, make, parse_exercises
from skscratch.gradcheck import check_all_operations, check_sk_unit, exercise_of

TOLERANCE = 1e-6
ALL = {e.name for e in EXERCISES}

# Run in the copy: the rows of the reference backend, as JSON (nan as null).
ROWS = (
    "import json, math; from skscratch.gradcheck import check_all_operations; "
    "rows = check_all_operations(seed=3, backends=('reference',)); "
    "print(json.dumps([[op, key, None if math.isnan(err) else err, ex] "
    "for _, op, key, err, ex in rows]))"
)


def _reference_rows(copy: Path) -> list[list]:
    run = subprocess.run(
        [sys.executable, "-c", ROWS],
        cwd=copy,
        env=dict(os.environ, PYTHONPATH=str(copy)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _copy_without(tmp_path: Path, written: set[str]) -> Path:
    """A student copy in which every exercise but those in `written` is left to write."""
    exercises = [e for e in parse_exercises(None) if e.name not in written]
    return make(tmp_path / "copy", exercises)


def test_every_operation_of_both_backends_passes_here():
    rows = check_all_operations(seed=1)
    backends = {row[0] for row in rows}
    assert backends == {"reference", "fast"}
    for backend, op, key, err, exercise in rows:
        assert exercise is None, (backend, op)
        assert err < TOLERANCE, (backend, op, key, err)
    # The fast pairs are checked against the reference ones, not only against differences.
    agreements = [row for row in rows if row[2] == "= reference"]
    assert len(agreements) >= 10
    ops = {op for backend, op, *_ in rows if backend == "reference"}
    assert {"im2col / col2im", "conv2d 3x3 grouped", "SK unit M=3 stride 2"} <= ops


def test_backends_can_be_checked_one_at_a_time():
    only_reference = check_all_operations(seed=2, backends=("reference",))
    assert {row[0] for row in only_reference} == {"reference"}


def test_a_fresh_student_copy_names_every_exercise_as_not_written(tmp_path):
    rows = _reference_rows(_copy_without(tmp_path, set()))
    not_written = {exercise for _, _, err, exercise in rows if err is None}
    assert not_written == ALL
    # Nothing passes but max pooling (the ImageNet stem's, not an exercise): every other
    # reference operation rests on some unwritten exercise.
    passing = {op for op, _, err, _ in rows if err is not None}
    assert passing == {"max pool 3x3 stride 2"}


@pytest.mark.parametrize(
    ("written", "operations"),
    [
        ({"batchnorm"}, {"batchnorm 2d (training)", "batchnorm 1d (training)"}),
        ({"im2col", "conv"}, {"im2col / col2im", "conv2d 3x3 grouped", "conv2d depthwise"}),
    ],
)
def test_an_exercise_once_written_passes_and_the_rest_stay_named(tmp_path, written, operations):
    rows = _reference_rows(_copy_without(tmp_path, written))
    not_written = {exercise for _, _, err, exercise in rows if err is None}
    assert not_written == ALL - written
    for op in operations:
        errors = [err for name, _, err, _ in rows if name == op]
        assert errors and all(err is not None and err < TOLERANCE for err in errors), op


def test_a_wrong_fast_pair_fails_its_agreement_with_the_reference(monkeypatch):
    from skscratch import fast

    real = fast.relu_forward

    def leaky(x):  # a plausible mistake: right shape, small difference
        out, cache = real(x)
        return out + 1e-3 * (x < 0) * x, cache

    monkeypatch.setattr(fast, "relu_forward", leaky)
    rows = check_all_operations(seed=0, backends=("fast",))
    (relu,) = [err for _, op, key, err, _ in rows if op == "relu" and key == "= reference"]
    assert relu > TOLERANCE


def test_exercise_names_come_from_the_copys_message():
    assert exercise_of(NotImplementedError("exercise conv: write this part of f")) == "conv"
    assert exercise_of(NotImplementedError("something else")) == "?"


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_the_sk_unit_check_runs_on_either_backend(backend):
    errors = check_sk_unit(np.random.default_rng(0), backend, branches=3, stride=2)
    assert set(errors) >= {"x", "convs.2.weight", "select.weight"}
    assert all(math.isfinite(e) and e < TOLERANCE for e in errors.values())
