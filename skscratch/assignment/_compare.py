"""How a check's results are judged against its expected values, with a readable reason.

`judge` takes what a program of `_programs.py` returned and what the case expects (see
`_cases.py`: a rule and a value per result) and returns None if every result passes, else the
reason of the first that fails: the wrong shape, None, NaN or inf, a missing or unexpected
result, or the relative error over the limit. It runs where the expected values are: in the
grader's process for hidden checks, in the student's for the visible ones. `failure` words
the reason when the student's code raised instead.
"""

from __future__ import annotations

import os
import traceback

import numpy as np

TOL = 1e-6  # relative error that passes, in float64


def rel_error(a, b) -> float:
    """max |a - b| / max(|a|, |b|) over the entries where b is not NaN (0 if both are 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    checked = ~np.isnan(b)
    a, b = a[checked], b[checked]
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def _judge_one(name: str, got, rule: str, want, source: str) -> str | None:
    if rule == "none":
        return None if got is None else f"{name} should be None here, got {_kind(got)}"
    if got is None:
        return f"{name}: returned None"
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    if rule == "equal":
        if got.dtype.kind != want.dtype.kind or not np.array_equal(got, want):
            wrong = "" if got.dtype.kind != want.dtype.kind or got.ndim == 0 else (
                f" at {int(np.sum(got != want))} of {got.size} entries"
            )  # fmt: skip
            shown = f" ({got.item()!r})" if got.ndim == 0 else ""
            return f"{name}{shown} differs from {source}{wrong}"
        return None
    if got.dtype.kind not in "fiu":
        return f"{name}: expected numbers, got an array of dtype {got.dtype}"
    if not np.all(np.isfinite(got)):
        return f"{name}: contains NaN or inf"
    err = rel_error(got, want)
    if not err < TOL:
        return f"{name} is wrong: relative error {err:.1e} against {source} (limit {TOL:g})"
    return None


def _kind(value) -> str:
    return f"an array of shape {np.shape(value)}" if hasattr(value, "shape") else repr(value)


def judge(got: dict, expected: dict, source: dict) -> str | None:
    """None if the results `got` ({name: value}) meet `expected` ({name: (rule, value)}), else
    the first reason they do not. A missing result fails, and so does one no check asked for."""
    unexpected = sorted(set(got) - set(expected))
    if unexpected:
        return f"unexpected results {unexpected}"
    for name, (rule, want) in expected.items():
        if name not in got:
            return f"{name}: missing from the results"
        reason = _judge_one(name, got[name], rule, want, source.get(name, "the reference"))
        if reason:
            return reason
    return None


def failure(exc: BaseException) -> str:
    """The reason a case failed because the student's code raised `exc`: not written yet, or
    what it raised and the file and line where."""
    if isinstance(exc, NotImplementedError):
        return f"not written yet ({exc})"
    where = traceback.extract_tb(exc.__traceback__)
    at = f" ({os.path.basename(where[-1].filename)}, line {where[-1].lineno})" if where else ""
    return f"raised {type(exc).__name__}: {exc}{at}"
