"""The grader's checks of the gradient_checking exercise: centred differences, the best float32
step, the planted bug and the ReLU kink.

Each check is a function of (sk, rng) that raises `CheckFailed` (or anything else) to fail; `sk`
is the student's package. The answers are worked out here again with NumPy alone.
`CHECKS` maps the exercise to its (name, check) pairs, in order.
"""

from __future__ import annotations

import numpy as np
from _compare import CheckFailed, expect


def _centred_difference(sk, rng):
    from skscratch.exercises.gradient_checking import centred_difference

    x = rng.standard_normal((3, 4))
    before = x.copy()
    got = centred_difference(lambda v: float(np.sum(np.sin(v) * v**2)), x)
    if not np.array_equal(x, before):
        raise CheckFailed("centred_difference changed x (perturb a copy, or put entries back)")
    expect("centred_difference of sum(sin(x) * x^2)", got, np.cos(x) * x**2 + 2 * x * np.sin(x))


def _best_float32_step(sk, rng):
    from skscratch.exercises.gradient_checking import STEPS, best_float32_step

    x = np.float32(1.0)
    errors = [
        abs(
            float((np.exp(x + np.float32(h)) - np.exp(x - np.float32(h))) / np.float32(2 * h))
            - np.e
        )
        for h in STEPS
    ]
    got = best_float32_step(np.exp, np.exp, 1.0)
    want = STEPS[int(np.argmin(errors))]
    if got is None or not np.isclose(got[0], want):
        raise CheckFailed(
            f"best_float32_step(exp, exp, 1.0) returned {got}; the float32 error is smallest at "
            f"another step (errors from h = 1e-1 down to 1e-7 should fall, then rise)"
        )


def _find_the_planted_bug(sk, rng):
    from skscratch.exercises.gradient_checking import find_the_planted_bug

    got = find_the_planted_bug()
    if got != "softplus":
        raise CheckFailed(f"find_the_planted_bug() returned {got!r}, whose backward pass is right")


def _relu_kink_entries(sk, rng):
    from skscratch.exercises.gradient_checking import relu_kink_entries

    h = 1e-3
    x = np.concatenate([rng.uniform(-3e-3, 3e-3, 40), [0.0, 0.5e-3, -0.5e-3, 2e-3, -2e-3]])
    numeric = (np.maximum(x + h, 0) - np.maximum(x - h, 0)) / (2 * h)
    want = ~np.isclose(numeric, (x > 0).astype(float), rtol=0, atol=1e-9)
    got = relu_kink_entries(x, h)
    if got is None or np.shape(got) != x.shape:
        raise CheckFailed(f"relu_kink_entries: expected a boolean array of shape {x.shape}")
    wrong = np.flatnonzero(np.asarray(got, dtype=bool) != want)
    if wrong.size:
        raise CheckFailed(
            f"relu_kink_entries(x, h={h}) is wrong at {wrong.size} entries, "
            f"e.g. x = {x[wrong[0]]:.2e}"
        )


CHECKS = {
    "gradient_checking": [
        ("centred difference", _centred_difference),
        ("float32 step", _best_float32_step),
        ("planted bug", _find_the_planted_bug),
        ("ReLU kink", _relu_kink_entries),
    ],
}
