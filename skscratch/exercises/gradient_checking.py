"""Exercises where the gradient check itself is the task.

1. `centred_difference`: the numerical gradient that every check in skscratch rests on.
2. `best_float32_step`: why gradients are checked in float64. The centred difference has two
   errors: the truncation term, about h^2 |f'''| / 6 (from the third derivative: the second
   cancels between the two sides), which shrinks with h, and rounding, about eps |f| / h with
   eps the machine epsilon (np.finfo(dtype).eps, as in tutorial 7), which grows as h shrinks.
   In float32, eps = 2^-23 ~ 1.2e-7: the best h is near eps^(1/3) ~ 5e-3, and the error there
   is ~1e-5 at best; in float64 (eps = 2^-52 ~ 2.2e-16) it is ~1e-11.
3. `find_the_planted_bug`: one backward pass in SUSPECTS is wrong; a gradient check finds it.
4. `relu_kink_entries`: ReLU has a kink at 0. A centred difference with step h at |x| < h
   measures (relu(x + h) - relu(x - h)) / 2h, which is neither 0 nor 1: the check "fails" there
   although the backward pass is right. Which entries does that happen to?
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray


def centred_difference(f: Callable[[NDArray], float], x: NDArray, h: float = 1e-6) -> NDArray:
    """The gradient of a scalar function f at x (any shape) by centred differences:
    grad[i] = (f(x + h e_i) - f(x - h e_i)) / (2h). x must be left as it was."""
    # Perturb one entry at a time, in a copy of x, and put it back before the next.
    # BEGIN SOLUTION
    x = np.array(x, dtype=x.dtype, copy=True)
    flat = x.reshape(-1)
    grad = np.zeros(flat.shape, dtype=np.float64)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f(x)
        flat[i] = old - h
        minus = f(x)
        flat[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape)
    # END SOLUTION


STEPS = tuple(10.0**-k for k in range(1, 8))  # 1e-1 ... 1e-7


def best_float32_step(f: Callable[[NDArray], NDArray], df: Callable[[float], float], x0: float):
    """Among STEPS, the step h whose float32 centred difference (f(x0 + h) - f(x0 - h)) / (2h),
    with x0 and h as np.float32 and f applied to float32 values, is closest to the exact
    derivative df(x0). Returns (h, its absolute error)."""
    # BEGIN SOLUTION
    x = np.float32(x0)
    errors = []
    for h in STEPS:
        h32 = np.float32(h)
        estimate = (f(x + h32) - f(x - h32)) / (np.float32(2) * h32)
        errors.append(abs(float(estimate) - df(x0)))
    best = int(np.argmin(errors))
    return STEPS[best], errors[best]
    # END SOLUTION


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# name: (forward, backward(x, dout) -> dx). One backward is wrong.
SUSPECTS = {
    "sigmoid": (_sigmoid, lambda x, dout: dout * _sigmoid(x) * (1 - _sigmoid(x))),
    "tanh": (np.tanh, lambda x, dout: dout * (1 - np.tanh(x) ** 2)),
    "softplus": (lambda x: np.log1p(np.exp(x)), lambda x, dout: dout * _sigmoid(-x)),
    "square": (lambda x: x**2, lambda x, dout: dout * 2 * x),
}


def find_the_planted_bug(seed: int = 0) -> str:
    """Gradient-check every backward pass in SUSPECTS (float64, a random x and a random dout,
    your `centred_difference` on sum(forward(x) * dout)) and return the name of the wrong one."""
    # BEGIN SOLUTION
    rng = np.random.default_rng(seed)
    errors = {}
    for name, (forward, backward) in SUSPECTS.items():
        x, dout = rng.standard_normal(5), rng.standard_normal(5)
        numeric = centred_difference(lambda v, fw=forward, d=dout: float(np.sum(fw(v) * d)), x)
        analytic = backward(x, dout)
        errors[name] = np.abs(analytic - numeric).max() / np.abs(numeric).max()
    return max(errors, key=errors.get)
    # END SOLUTION


def relu_kink_entries(x: NDArray, h: float) -> NDArray:
    """A boolean array like x: True where the centred difference of ReLU with step h differs
    from ReLU's true derivative (1 for x > 0, 0 for x < 0) because x + h and x - h lie on
    different sides of the kink."""
    # BEGIN SOLUTION
    return np.abs(x) < h
    # END SOLUTION
