"""The grading checks of one exercise, run against a student copy in a fresh process.

    python _worker.py STUDENT_DIR EXERCISE SEED SECONDS_PER_CHECK

prints one JSON line per check: {"check": ..., "passed": bool, "reason": ...}. The student's
package is imported from STUDENT_DIR; the references here use NumPy alone (nested loops and
formulas written out again), so a mistake in the student's code cannot leak into its own grade.
What is graded is the student's own functions, the reference path: in this process
`skscratch.fast` (the compiled backend, which is the instructor's code) cannot be imported, so
a function that hands its work to it fails instead of scoring.
Backward passes are checked against centred differences in float64, with a random upstream
gradient. Each check has a time limit; a check that raises, returns the wrong shape or NaN, or
takes too long fails with a reason, and the next check runs.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import signal
import sys
import traceback

import numpy as np

TOLERANCE = 1e-6  # largest relative error that passes, in float64


class CheckFailed(Exception):
    """A check's readable reason for failing."""


class TimeLimit(Exception):
    pass


def _alarm(signum, frame):
    raise TimeLimit


# -- comparing ----------------------------------------------------------------------------------


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


# -- independent references ---------------------------------------------------------------------


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_loops(x, w, b, stride, padding, dilation, groups):
    n, c_in, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, c_out, ho, wo))
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for oy in range(ho):
            for ox in range(wo):
                for ci in range(c_in_g):
                    for i in range(kh):
                        for j in range(kw):
                            out[:, co, oy, ox] += (
                                w[co, ci, i, j]
                                * xp[
                                    :,
                                    g * c_in_g + ci,
                                    oy * stride + i * dilation,
                                    ox * stride + j * dilation,
                                ]
                            )
        if b is not None:
            out[:, co] += b[co]
    return out


def im2col_loops(x, kh, kw, stride, padding, dilation):
    n, c, h, wd = x.shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.zeros((n, c * kh * kw, ho * wo))
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for oy in range(ho):
                    for ox in range(wo):
                        cols[:, (ch * kh + i) * kw + j, oy * wo + ox] = xp[
                            :, ch, oy * stride + i * dilation, ox * stride + j * dilation
                        ]
    return cols


def col2im_loops(cols, x_shape, kh, kw, stride, padding, dilation):
    n, c, h, wd = x_shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for oy in range(ho):
                    for ox in range(wo):
                        dxp[:, ch, oy * stride + i * dilation, ox * stride + j * dilation] += cols[
                            :, (ch * kh + i) * kw + j, oy * wo + ox
                        ]
    return dxp[:, :, padding : padding + h, padding : padding + wd]


def batchnorm_formula(x, gamma, beta, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(
        var.reshape(shape) + eps
    ) + beta.reshape(shape)


def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sk_unit_reference(x, p, stride, groups):
    """The SK unit (training mode) from the formulas: Split, Fuse, Select."""
    m_count = sum(1 for k in p if k.startswith("convs."))
    branches = []
    for m in range(m_count):
        d = m + 1
        u = conv_loops(x, p[f"convs.{m}.weight"], None, stride, d, d, groups)
        mean, var = batch_stats(u)
        u = batchnorm_formula(u, p[f"bns.{m}.weight"], p[f"bns.{m}.bias"], mean, var)
        branches.append(np.maximum(u, 0))
    s = sum(branches).mean(axis=(2, 3))
    z = s @ p["fc.weight"].T
    mean, var = batch_stats(z)
    z = np.maximum(batchnorm_formula(z, p["fc_bn.weight"], p["fc_bn.bias"], mean, var), 0)
    a = softmax((z @ p["select.weight"].T).reshape(len(x), m_count, -1), axis=1)
    return sum(a[:, m, :, None, None] * u for m, u in enumerate(branches))


# -- the exercises' checks ----------------------------------------------------------------------
#
# Each is a function of (sk, rng) that raises CheckFailed (or anything else) to fail; `sk` is
# the student's package.

WINDOWS = [  # (kh, kw, stride, padding, dilation, h, w)
    (3, 3, 1, 1, 1, 5, 6),
    (3, 2, 2, 2, 2, 7, 6),
    (2, 3, 3, 0, 1, 7, 8),
]


def _im2col_forward(sk, rng):
    from skscratch.im2col import im2col

    for kh, kw, s, p, d, h, w in WINDOWS:
        x = rng.standard_normal((2, 3, h, w))
        got = im2col(x, kh, kw, stride=s, padding=p, dilation=d)
        expect(
            f"im2col (kernel {kh}x{kw}, stride {s}, padding {p}, dilation {d})",
            got,
            im2col_loops(x, kh, kw, s, p, d),
        )


def _col2im(sk, rng):
    from skscratch.im2col import col2im

    for kh, kw, s, p, d, h, w in WINDOWS:
        shape = (2, 3, h, w)
        ho, wo = out_size(h, kh, s, p, d), out_size(w, kw, s, p, d)
        cols = rng.standard_normal((2, 3 * kh * kw, ho * wo))
        got = col2im(cols, shape, kh, kw, stride=s, padding=p, dilation=d)
        expect(
            f"col2im (kernel {kh}x{kw}, stride {s}, padding {p}, dilation {d})",
            got,
            col2im_loops(cols, shape, kh, kw, s, p, d),
        )


CONV_CASES = [  # (n, c_in, c_out, groups, kernel, stride, padding, dilation, h, w, bias)
    (2, 4, 6, 2, 3, 1, 1, 1, 5, 5, True),
    (2, 4, 4, 4, 3, 2, 2, 2, 7, 6, False),
    (1, 3, 2, 1, 2, 1, 0, 1, 4, 5, True),
]


def _conv_inputs(rng, case):
    n, c_in, c_out, g, k, s, p, d, h, w, bias = case
    x = rng.standard_normal((n, c_in, h, w))
    wt = rng.standard_normal((c_out, c_in // g, k, k))
    b = rng.standard_normal(c_out) if bias else None
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _conv_forward(sk, rng):
    from skscratch.conv import conv2d_forward

    for case in CONV_CASES:
        x, w, b, opts = _conv_inputs(rng, case)
        out, _ = conv2d_forward(x, w, b, **opts)
        expect(f"conv2d_forward with {opts}", out, conv_loops(x, w, b, **opts))


def _conv_backward(sk, rng):
    for case in CONV_CASES:
        _conv_backward_case(rng, *_conv_inputs(rng, case))


def _conv_backward_case(rng, x, w, b, opts):
    from skscratch.conv import conv2d_backward, conv2d_forward

    out, cache = conv2d_forward(x, w, b, **opts)
    dout = rng.standard_normal(np.shape(out))
    dx, dw, db = conv2d_backward(dout, cache)
    expect_gradient(
        f"dx of conv2d_backward with {opts}",
        dx,
        lambda v: conv_loops(v, w, b, **opts),
        x,
        dout,
        rng,
    )
    expect_gradient(
        f"dw of conv2d_backward with {opts}",
        dw,
        lambda v: conv_loops(x, v, b, **opts),
        w,
        dout,
        rng,
    )
    if b is not None:
        expect_gradient(
            f"db of conv2d_backward with {opts}",
            db,
            lambda v: conv_loops(x, w, v, **opts),
            b,
            dout,
            rng,
        )


def _bn_inputs(rng, shape):
    c = shape[1]
    per = (1, c) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2, per) + rng.uniform(-1, 1, per)
    return (
        x,
        rng.uniform(0.5, 1.5, c),
        rng.normal(0, 0.5, c),
        rng.normal(0, 1, c),
        rng.uniform(0.5, 2, c),
    )


def _batchnorm_forward(sk, rng):
    from skscratch.batchnorm import batchnorm_forward

    for shape in [(4, 3), (3, 2, 4, 5)]:
        x, gamma, beta, rm, rv = _bn_inputs(rng, shape)
        out, new_mean, new_var, _ = batchnorm_forward(x, gamma, beta, rm, rv, training=True)
        mean, var = batch_stats(x)
        m = x.size // x.shape[1]
        expect(
            f"batchnorm_forward output, training, x {shape}",
            out,
            batchnorm_formula(x, gamma, beta, mean, var),
        )
        expect(f"batchnorm_forward running mean, x {shape}", new_mean, 0.9 * rm + 0.1 * mean)
        expect(
            f"batchnorm_forward running variance (unbiased), x {shape}",
            new_var,
            0.9 * rv + 0.1 * var * m / (m - 1),
        )
        out, _, _, _ = batchnorm_forward(x, gamma, beta, rm, rv, training=False)
        expect(
            f"batchnorm_forward output, evaluation, x {shape}",
            out,
            batchnorm_formula(x, gamma, beta, rm, rv),
        )


def _batchnorm_backward(sk, rng):
    from skscratch.batchnorm import batchnorm_backward, batchnorm_forward

    for shape in [(4, 3), (3, 2, 4, 5)]:
        x, gamma, beta, rm, rv = _bn_inputs(rng, shape)
        out, _, _, cache = batchnorm_forward(x, gamma, beta, rm, rv, training=True)
        dout = rng.standard_normal(np.shape(out))
        dx, dgamma, dbeta = batchnorm_backward(dout, cache)

        def f(x=x, gamma=gamma, beta=beta):
            return batchnorm_formula(x, gamma, beta, *batch_stats(x))

        expect_gradient(
            f"dx of batchnorm_backward, training, x {shape}", dx, lambda v: f(x=v), x, dout, rng
        )
        expect_gradient(
            f"dgamma of batchnorm_backward, x {shape}",
            dgamma,
            lambda v: f(gamma=v),
            gamma,
            dout,
            rng,
        )
        expect_gradient(
            f"dbeta of batchnorm_backward, x {shape}", dbeta, lambda v: f(beta=v), beta, dout, rng
        )


def _relu_backward(sk, rng):
    from skscratch.activations import relu_backward, relu_forward

    # Values at least 0.1 from 0: a centred difference across the kink would measure the kink.
    x = rng.uniform(0.1, 2, (3, 4, 5)) * rng.choice([-1, 1], (3, 4, 5))
    out, cache = relu_forward(x)
    dout = rng.standard_normal(x.shape)
    expect_gradient(
        "relu_backward", relu_backward(dout, cache), lambda v: np.maximum(v, 0), x, dout, rng
    )


def _pool_backward(sk, rng):
    from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward

    x = rng.standard_normal((2, 3, 4, 5))
    out, cache = global_avg_pool_forward(x)
    dout = rng.standard_normal(np.shape(out))
    expect_gradient(
        "global_avg_pool_backward",
        global_avg_pool_backward(dout, cache),
        lambda v: v.mean(axis=(2, 3)),
        x,
        dout,
        rng,
    )


def _linear_backward(sk, rng):
    from skscratch.linear import linear_backward, linear_forward

    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(np.shape(out))
    dx, dw, db = linear_backward(dout, cache)
    expect_gradient("dx of linear_backward", dx, lambda v: v @ w.T + b, x, dout, rng)
    expect_gradient("dw of linear_backward", dw, lambda v: x @ v.T + b, w, dout, rng)
    expect_gradient("db of linear_backward", db, lambda v: x @ w.T + v, b, dout, rng)


def _branch_softmax_forward(sk, rng):
    from skscratch.activations import branch_softmax_forward

    z = rng.standard_normal((3, 2, 4)) * 3
    z[0, 0, 0] = 800.0  # exp(800) overflows: subtract the maximum first
    a, _ = branch_softmax_forward(z)
    expect("branch_softmax_forward (softmax over axis 1, one logit of 800)", a, softmax(z, 1))


def _branch_softmax_backward(sk, rng):
    from skscratch.activations import branch_softmax_backward, branch_softmax_forward

    z = rng.standard_normal((3, 3, 4))
    a, cache = branch_softmax_forward(z)
    da = rng.standard_normal(np.shape(a))
    expect_gradient(
        "branch_softmax_backward",
        branch_softmax_backward(da, cache),
        lambda v: softmax(v, 1),
        z,
        da,
        rng,
    )


def _sk_params(rng, c, branches, groups, d):
    p = {}
    for m in range(branches):
        p[f"convs.{m}.weight"] = rng.standard_normal((c, c // groups, 3, 3)) / np.sqrt(
            9 * c // groups
        )
        p[f"bns.{m}.weight"] = rng.uniform(0.5, 1.5, c)
        p[f"bns.{m}.bias"] = rng.normal(0, 0.5, c)
        p[f"bns.{m}.running_mean"], p[f"bns.{m}.running_var"] = np.zeros(c), np.ones(c)
    p["fc.weight"] = rng.standard_normal((d, c)) / np.sqrt(c)
    p["fc_bn.weight"], p["fc_bn.bias"] = rng.uniform(0.5, 1.5, d), rng.uniform(0.5, 1.5, d)
    p["fc_bn.running_mean"], p["fc_bn.running_var"] = np.zeros(d), np.ones(d)
    p["select.weight"] = rng.standard_normal((branches * c, d)) / np.sqrt(d)
    return p


SK_CASE = dict(n=3, c=4, h=5, branches=2, groups=2, d=3, stride=1)


def _sk_unit_forward(sk, rng):
    from skscratch.sk import sk_unit_forward

    n, c, h = SK_CASE["n"], SK_CASE["c"], SK_CASE["h"]
    p = _sk_params(rng, c, SK_CASE["branches"], SK_CASE["groups"], SK_CASE["d"])
    x = rng.standard_normal((n, c, h, h))
    out, _ = sk_unit_forward(x, p, stride=SK_CASE["stride"], groups=SK_CASE["groups"])
    learned = {k: v for k, v in p.items() if not k.endswith(("running_mean", "running_var"))}
    want = sk_unit_reference(x, learned, SK_CASE["stride"], SK_CASE["groups"])
    expect("sk_unit_forward (M=2, G=2, training)", out, want)


def _sk_unit_backward(sk, rng):
    from skscratch.sk import sk_unit_backward, sk_unit_forward

    n, c, h = SK_CASE["n"], SK_CASE["c"], SK_CASE["h"]
    p = _sk_params(rng, c, SK_CASE["branches"], SK_CASE["groups"], SK_CASE["d"])
    x = rng.standard_normal((n, c, h, h))
    opts = dict(stride=SK_CASE["stride"], groups=SK_CASE["groups"])
    out, cache = sk_unit_forward(x, p, **opts)
    dout = rng.standard_normal(np.shape(out))
    dx, grads = sk_unit_backward(dout, cache)
    learned = {k: v for k, v in p.items() if not k.endswith(("running_mean", "running_var"))}
    expect_gradient(
        "dx of sk_unit_backward", dx, lambda v: sk_unit_reference(v, learned, **opts), x, dout, rng
    )
    for key, value in learned.items():
        if key not in grads:
            raise CheckFailed(f"sk_unit_backward returned no gradient for {key!r}")
        expect_gradient(
            f"gradient of {key} from sk_unit_backward",
            grads[key],
            lambda v, key=key: sk_unit_reference(x, learned | {key: v}, **opts),
            value,
            dout,
            rng,
        )


def _softmax_ce(sk, rng):
    from skscratch.losses import softmax_cross_entropy

    z = rng.standard_normal((5, 4)) * 2
    z[1, 2] = 1000.0  # logsumexp must not overflow
    y = rng.integers(0, 4, 5)
    loss, dz = softmax_cross_entropy(z, y)
    want = float(
        np.mean(np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(5), y])
    )
    expect("softmax_cross_entropy loss (one logit of 1000)", loss, want)

    def f(v):
        return np.mean(
            np.log(np.exp(v - v.max(1, keepdims=True)).sum(1)) + v.max(1) - v[np.arange(5), y]
        )

    expect_gradient("dlogits of softmax_cross_entropy", dz, f, z, np.float64(1.0), rng)


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
    "im2col": [("im2col", _im2col_forward), ("col2im", _col2im)],
    "conv": [("forward", _conv_forward), ("backward", _conv_backward)],
    "batchnorm": [("forward", _batchnorm_forward), ("backward", _batchnorm_backward)],
    "relu_pool_fc": [
        ("ReLU backward", _relu_backward),
        ("pool backward", _pool_backward),
        ("FC backward", _linear_backward),
    ],
    "branch_softmax": [
        ("forward", _branch_softmax_forward),
        ("backward", _branch_softmax_backward),
    ],
    "sk_unit": [("forward", _sk_unit_forward), ("backward", _sk_unit_backward)],
    "softmax_ce": [("loss and gradient", _softmax_ce)],
    "gradient_checking": [
        ("centred difference", _centred_difference),
        ("float32 step", _best_float32_step),
        ("planted bug", _find_the_planted_bug),
        ("ReLU kink", _relu_kink_entries),
    ],
}


class NoFastBackend(importlib.abc.MetaPathFinder):
    """Refuses `skscratch.fast` and its modules: the grader grades the student's functions."""

    def find_spec(self, name, path=None, target=None):
        if name == "skscratch.fast" or name.startswith("skscratch.fast."):
            raise ImportError(
                f"{name} is not available in the grader: your own functions are graded, not "
                f"the compiled backend"
            )
        return None


def run(student_dir: str, exercise: str, seed: int, seconds: int) -> None:
    sys.meta_path.insert(0, NoFastBackend())
    sys.path.insert(0, student_dir)
    import skscratch

    here = os.path.realpath(os.path.dirname(skscratch.__file__))
    if not here.startswith(os.path.realpath(student_dir) + os.sep):
        sys.exit(f"imported skscratch from {here}, not from the student copy {student_dir}")

    signal.signal(signal.SIGALRM, _alarm)
    for name, check in CHECKS[exercise]:
        rng = np.random.default_rng(seed)
        signal.alarm(seconds)
        try:
            check(skscratch, rng)
            result = {"check": name, "passed": True, "reason": ""}
        except CheckFailed as exc:
            result = {"check": name, "passed": False, "reason": str(exc)}
        except TimeLimit:
            result = {"check": name, "passed": False, "reason": f"took longer than {seconds} s"}
        except NotImplementedError as exc:
            result = {"check": name, "passed": False, "reason": f"not written yet ({exc})"}
        except Exception as exc:  # noqa: BLE001 - any error in student code is a failed check
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result = {
                "check": name,
                "passed": False,
                "reason": f"raised {type(exc).__name__}: {exc} "
                f"({os.path.basename(where.filename)}, line {where.lineno})",
            }
        finally:
            signal.alarm(0)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
