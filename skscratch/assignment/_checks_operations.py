"""The grader's checks of the operation exercises: im2col, conv, batchnorm, relu_pool_fc,
branch_softmax, sk_unit and softmax_ce.

Each check is a function of (sk, rng) that raises `CheckFailed` (or anything else) to fail; `sk`
is the student's package, and every check imports the student's functions inside its body,
after `_worker.py` has put the student copy first on the path. Forward passes are compared with
`_references.py`, backward passes with centred differences of those references.
`CHECKS` maps each of these exercises to its (name, check) pairs, in order.
"""

from __future__ import annotations

import numpy as np
from _compare import CheckFailed, expect, expect_gradient
from _references import (
    batch_stats,
    batchnorm_formula,
    col2im_loops,
    conv_loops,
    im2col_loops,
    out_size,
    sk_unit_reference,
    softmax,
)

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
}
