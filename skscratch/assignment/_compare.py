"""How the grader compares a student's answer with the truth, and stops a check that runs long.

`expect` compares a result with an independent reference (`_references.py`); `expect_gradient`
compares a backward pass with centred differences of the reference in float64, weighting the
output by a random upstream gradient (an all-ones one hides batch-norm bugs, because the
normalised values sum to zero). Either raises `CheckFailed` with a readable reason: the wrong
shape, None, NaN or inf, or the relative error over the limit. `TimeLimit` is what
`raise_time_limit`, the SIGALRM handler, raises into a check that takes too long.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-6  # largest relative error that passes, in float64


class CheckFailed(Exception):
    """A check's readable reason for failing."""


class TimeLimit(Exception):
    """A check ran past its time limit."""


def raise_time_limit(signum, frame):
    """The SIGALRM handler: stops the running check."""
    raise TimeLimit


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def expect(what: str, got, want, tol: float = TOLERANCE) -> None:
    got = np.asarray(got) if got is not None else None
    if got is None:
        raise CheckFailed(f"{what}: returned None")
    if got.shape != np.shape(want):
        raise CheckFailed(f"{what}: shape {got.shape}, expected {np.shape(want)}")
    if not np.all(np.isfinite(got)):
        raise CheckFailed(f"{what}: contains NaN or inf")
    err = rel_error(got, want)
    if not err < tol:
        raise CheckFailed(f"{what}: relative error {err:.1e} against the reference (limit {tol:g})")


def numerical_gradient(f, x, dout, h=1e-6, max_entries=30, rng=None):
    """Centred differences of sum(f(x) * dout) at up to max_entries sampled entries of x;
    returns (indices, values)."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    idx = np.arange(flat.size)
    if flat.size > max_entries:
        idx = rng.choice(flat.size, max_entries, replace=False)
    values = []
    for i in idx:
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        values.append((plus - minus) / (2 * h))
    return idx, np.array(values)


def expect_gradient(what: str, analytic, f, x, dout, rng) -> None:
    """analytic: the student's gradient of sum(f(x) * dout) with respect to x."""
    if analytic is None:
        raise CheckFailed(f"{what}: returned None")
    analytic = np.asarray(analytic)
    if analytic.shape != np.shape(x):
        raise CheckFailed(f"{what}: shape {analytic.shape}, expected {np.shape(x)}")
    if not np.all(np.isfinite(analytic)):
        raise CheckFailed(f"{what}: contains NaN or inf")
    idx, numeric = numerical_gradient(f, x, dout, rng=rng)
    err = rel_error(analytic.reshape(-1)[idx], numeric)
    if not err < TOLERANCE:
        raise CheckFailed(
            f"{what} is wrong: relative error {err:.1e} against finite differences "
            f"(limit {TOLERANCE:g})"
        )
