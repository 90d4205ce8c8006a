"""Every reference pair (the plain-NumPy teaching modules) against independent references.

For each operation: the forward pass against the nested loops of tests/reference.py (and, for the
convolution, against scipy.signal.correlate); the backward pass against centred finite
differences in float64, weighted by a random upstream gradient. The compositions of
skscratch.layers against their parts. Then, for the pairs of both backends: dtypes kept; inputs
never modified; read-only and non-contiguous inputs accepted. (test_fast.py shows that every fast
pair gives the result of its reference pair.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import reference
from conftest import (
    CONV_VERSIONS,
    any_shapes,
    batchnorm_cases,
    branch_shapes,
    classification_shapes,
    conv_cases,
    conv_pair,
    linear_shapes,
    nchw_shapes,
    seeds,
    windows,
)
from hypothesis import given
from hypothesis import strategies as st
from scipy import signal

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    branch_softmax_backward,
    branch_softmax_forward,
    conv2d_backward,
    conv2d_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from skscratch.backends import BACKENDS, Backend, get_backend
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error
from skscratch.im2col import col2im, im2col
from skscratch.layers import add_relu_forward, batchnorm_relu_backward, batchnorm_relu_forward

# Centred differences with h = 1e-6 in float64 are good to about 1e-9 on these small, well
# scaled cases; a wrong backward pass is off by far more than 1e-6.
GRAD_TOL = 1e-6
# check_gradients draws its random upstream gradient from its own seed, which the tests pass as
# the input's seed + 1: with the same seed, dout would repeat the draws that made x (for batch
# norm, dout would then lie in the span of 1 and xhat, exactly where dx vanishes).


def assert_gradients_match(errors: dict[str, float], names) -> None:
    """Every named input was checked (none silently skipped) and passed."""
    assert set(errors) == set(names), f"checked {sorted(errors)}, expected {sorted(names)}"
    bad = {name: err for name, err in errors.items() if not err < GRAD_TOL}
    assert not bad, f"relative gradient errors above {GRAD_TOL}: {bad}"


# --- convolution -------------------------------------------------------------------------------


@given(conv_cases())
def test_conv_forward_matches_loops(case):
    a = case.arrays()
    out, _ = conv2d_forward(a["x"], a["w"], a["b"], **case.options)
    expected = reference.conv2d(a["x"], a["w"], a["b"], **case.options)
    assert out.shape == (case.n, case.c_out, *case.window.out_hw)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def conv2d_scipy(x, w, b, window, groups):
    """Convolution from scipy's 2-D cross-correlation, one (input, output) channel pair at a time.

    Padding by np.pad; dilation by spreading the kernel taps `dilation` apart with zeros between
    them; stride by keeping every stride-th position of the dense 'valid' result.
    """
    (sh, sw), (ph, pw), (dh, dw) = window.stride, window.padding, window.dilation
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    c_out, c_in_g, kh, kw = w.shape
    w_spread = np.zeros((c_out, c_in_g, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    w_spread[:, :, ::dh, ::dw] = w
    c_out_g = c_out // groups
    out = np.zeros((x.shape[0], c_out, *window.out_hw))
    for n in range(x.shape[0]):
        for co in range(c_out):
            g = co // c_out_g
            dense = sum(
                signal.correlate(
                    x_pad[n, g * c_in_g + ci], w_spread[co, ci], mode="valid", method="direct"
                )
                for ci in range(c_in_g)
            )
            out[n, co] = dense[::sh, ::sw] + (0.0 if b is None else b[co])
    return out


@given(conv_cases())
def test_conv_forward_matches_scipy(case):
    a = case.arrays()
    out, _ = conv2d_forward(a["x"], a["w"], a["b"], **case.options)
    expected = conv2d_scipy(a["x"], a["w"], a["b"], case.window, case.groups)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@given(conv_cases())
def test_conv_gradients(case):
    inputs = {name: v for name, v in case.arrays().items() if v is not None}
    errors = check_gradients(
        conv2d_forward, conv2d_backward, inputs, fixed=case.options, seed=case.seed + 1
    )
    assert_gradients_match(errors, inputs)


def test_conv_without_bias_has_no_bias_gradient():
    rng = np.random.default_rng(0)
    out, cache = conv2d_forward(
        rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3))
    )
    assert conv2d_backward(rng.standard_normal(out.shape), cache)[2] is None


@given(st.integers(1, 4), windows(), seeds)
def test_depthwise_conv_gradients(channels, window, seed):
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((2, channels, window.h, window.w)),
        "w": rng.standard_normal((channels, 1, window.kh, window.kw)),
        "b": rng.standard_normal(channels),
    }
    opts = {**window.options, "groups": channels}
    errors = check_gradients(conv2d_forward, conv2d_backward, inputs, fixed=opts, seed=seed + 1)
    assert_gradients_match(errors, inputs)


@given(conv_cases(max_kernel=1, max_padding=0, max_stride=1))
def test_one_by_one_conv_is_a_matrix_product_over_channels(case):
    # A 1x1 kernel with stride 1 and no padding mixes channels pixel by pixel (dilation does
    # nothing with a single tap).
    a = case.arrays()
    x, w, b = a["x"], a["w"], a["b"]
    out, _ = conv2d_forward(x, w, b, **case.options)
    g = case.groups
    x_g = x.reshape(case.n, g, case.c_in // g, *x.shape[2:])
    w_g = w.reshape(g, case.c_out // g, case.c_in // g)
    expected = np.einsum("goc,ngchw->ngohw", w_g, x_g).reshape(out.shape)
    if b is not None:
        expected += b[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    inputs = {name: v for name, v in a.items() if v is not None}
    errors = check_gradients(
        conv2d_forward, conv2d_backward, inputs, fixed=case.options, seed=case.seed + 1
    )
    assert_gradients_match(errors, inputs)


@pytest.mark.parametrize("version", CONV_VERSIONS)
def test_input_grad_false_skips_only_dx(version):
    forward, backward = conv_pair(version)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 7, 6))
    w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    options = dict(stride=2, padding=1, groups=2)
    out, cache = forward(x, w, b, **options)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = backward(dout, cache)
    _, cache = forward(x, w, b, **options)
    none, dw_only, db_only = backward(dout, cache, input_grad=False)
    assert none is None and dx.shape == x.shape
    np.testing.assert_array_equal(dw_only, dw)
    np.testing.assert_array_equal(db_only, db)


# --- im2col / col2im ---------------------------------------------------------------------------

# Dilations and strides up to 3 that rarely divide the input evenly, and padding up to 4, larger
# than any kernel (whole windows then read only padding).
gather_windows = windows(max_kernel=4, max_stride=3, max_dilation=3, max_padding=4)


@given(gather_windows, st.integers(0, 2), st.integers(1, 3), seeds)
def test_im2col_matches_loops_exactly(window, n, c, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, window.h, window.w))
    cols = im2col(x, window.kh, window.kw, **window.options)
    ho, wo = window.out_hw
    assert cols.shape == (n, c * window.kh * window.kw, ho * wo)
    # A gather only copies values: any difference at all is a wrong index.
    assert np.array_equal(cols, reference.im2col(x, window.kh, window.kw, **window.options))


@given(gather_windows, st.integers(0, 2), st.integers(1, 3), seeds)
def test_col2im_matches_loops(window, n, c, seed):
    ho, wo = window.out_hw
    cols = np.random.default_rng(seed).standard_normal((n, c * window.kh * window.kw, ho * wo))
    args = (cols, (n, c, window.h, window.w), window.kh, window.kw)
    dx = col2im(*args, **window.options)
    np.testing.assert_allclose(
        dx, reference.col2im(*args, **window.options), rtol=1e-12, atol=1e-12
    )


@given(gather_windows, st.integers(1, 2), st.integers(1, 3), seeds)
def test_col2im_is_the_adjoint_of_im2col(window, n, c, seed):
    # <im2col(x), cols> == <x, col2im(cols)> for all x and cols: what makes col2im the backward
    # pass of im2col.
    rng = np.random.default_rng(seed)
    ho, wo = window.out_hw
    x = rng.standard_normal((n, c, window.h, window.w))
    cols = rng.standard_normal((n, c * window.kh * window.kw, ho * wo))
    opts = window.options
    lhs = np.sum(im2col(x, window.kh, window.kw, **opts) * cols)
    rhs = np.sum(x * col2im(cols, x.shape, window.kh, window.kw, **opts))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


# --- batch norm --------------------------------------------------------------------------------


@given(batchnorm_cases())
def test_batchnorm_forward_matches_loops(case):
    a = case.arrays()
    out, new_mean, new_var, _ = batchnorm_forward(**a, training=case.training)
    expected_out, expected_mean, expected_var = reference.batchnorm(**a, training=case.training)
    np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new_var, expected_var, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@given(data=st.data())
def test_batchnorm_gradients(training, data):
    # The channels of x have spread-out values (conftest), so the batch variance is never tiny
    # and the curvature of the normalisation does not swamp the finite differences; and at
    # least 3 values per channel, see conftest.batchnorm_shapes. With only 3 values, dx can be
    # small next to the loss: x of shape (3, 1) gave a relative error of 1.1e-6 at h = 1e-6 from
    # rounding (eps * |L| / h), 3.6e-8 at h = 1e-5, where the curvature term is still far below.
    case = data.draw(batchnorm_cases(training=training, min_per_channel=3))
    a = case.arrays()
    inputs = {name: a[name] for name in ("x", "gamma", "beta")}
    fixed = {"running_mean": a["running_mean"], "running_var": a["running_var"]}
    errors = check_gradients(
        batchnorm_forward,
        batchnorm_backward,
        inputs,
        fixed={**fixed, "training": training},
        h=1e-5,
        seed=case.seed + 1,
    )
    assert_gradients_match(errors, inputs)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 5)])
def test_batchnorm_running_statistics_follow_the_torch_recurrence(shape):
    rng = np.random.default_rng(1)
    c = shape[1]
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    running_mean, running_var = np.zeros(c), np.ones(c)  # torch's initial values
    expected_mean, expected_var = running_mean.copy(), running_var.copy()
    for step in range(5):
        x = rng.normal(loc=step, scale=1 + step, size=shape)
        _, running_mean, running_var, _ = batchnorm_forward(
            x, gamma, beta, running_mean, running_var, training=True
        )
        # momentum 0.1 weighs the new batch; the running variance takes the unbiased (m - 1)
        # batch variance, although the normalisation itself used the biased one.
        expected_mean = 0.9 * expected_mean + 0.1 * x.mean(axis=axes)
        expected_var = 0.9 * expected_var + 0.1 * x.var(axis=axes, ddof=1)
    np.testing.assert_allclose(running_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, expected_var, rtol=1e-12)

    # Evaluation mode normalises with the running statistics and hands them back unchanged.
    x = rng.normal(loc=-3, scale=0.5, size=shape)
    kept_mean, kept_var = running_mean.copy(), running_var.copy()
    out, eval_mean, eval_var, _ = batchnorm_forward(
        x, gamma, beta, running_mean, running_var, training=False
    )
    per_channel = (1, c) if len(shape) == 2 else (1, c, 1, 1)

    def channel(v):
        return v.reshape(per_channel)

    expected_out = channel(gamma) * (x - channel(kept_mean)) / np.sqrt(
        channel(kept_var) + 1e-5
    ) + channel(beta)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(eval_mean, kept_mean)
    np.testing.assert_array_equal(eval_var, kept_var)
    np.testing.assert_array_equal(running_mean, kept_mean)
    np.testing.assert_array_equal(running_var, kept_var)
    assert not np.shares_memory(eval_mean, running_mean)
    assert not np.shares_memory(eval_var, running_var)


def test_batchnorm_momentum_is_the_weight_of_the_new_batch():
    x = np.array([[1.0], [3.0]])  # mean 2, unbiased variance 2
    one = np.ones(1)
    _, new_mean, new_var, _ = batchnorm_forward(
        x, one, 0 * one, 10 * one, 10 * one, training=True, momentum=0.25
    )
    np.testing.assert_allclose(new_mean, [0.75 * 10 + 0.25 * 2])
    np.testing.assert_allclose(new_var, [0.75 * 10 + 0.25 * 2])


def _batchnorm_setup(shape=(6, 3, 2, 2), seed=3):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    params = {
        "gamma": rng.uniform(0.5, 2, c),
        "beta": rng.standard_normal(c),
        "running_mean": np.zeros(c),
        "running_var": np.ones(c),
    }
    _, _, _, cache = batchnorm_forward(x, **params)

    def dx_numeric(dout):
        return numerical_gradient(lambda v: batchnorm_forward(v, **params)[0], x, dout)

    return x, cache, dx_numeric


def _batchnorm_dx_missing(term, dout, cache):
    """The training-mode dx with one of its two correction terms left out, as a bug would."""
    xhat, gamma, inv_std = cache.xhat, cache.gamma, cache.inv_std
    axes = (0, 2, 3)
    dxhat = dout * gamma.reshape(1, -1, 1, 1)
    mean_term = dxhat.mean(axis=axes, keepdims=True)  # through mu
    variance_term = xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)  # through var
    kept = {"mean": variance_term, "variance": mean_term}[term]
    return (dxhat - kept) * inv_std.reshape(1, -1, 1, 1)


def test_gradient_check_catches_batchnorm_backward_without_the_mean_term():
    x, cache, dx_numeric = _batchnorm_setup()
    dout = np.random.default_rng(4).standard_normal(x.shape)
    numeric = dx_numeric(dout)
    assert rel_error(batchnorm_backward(dout, cache)[0], numeric) < GRAD_TOL
    assert rel_error(_batchnorm_dx_missing("mean", dout, cache), numeric) > 1e-2
    # An all-ones dout does not hide this one: the true dx is then 0 (sum(out) does not depend
    # on x), while dx without the mean term is gamma / std.
    ones = np.ones(x.shape)
    assert np.abs(_batchnorm_dx_missing("mean", ones, cache) - dx_numeric(ones)).max() > 0.1


def test_all_ones_dout_hides_batchnorm_backward_without_the_variance_term():
    x, cache, dx_numeric = _batchnorm_setup()
    dout = np.random.default_rng(5).standard_normal(x.shape)
    assert rel_error(_batchnorm_dx_missing("variance", dout, cache), dx_numeric(dout)) > 1e-2
    # With dout = 1, dxhat = gamma is constant per channel and mean(dxhat * xhat) is gamma times
    # the mean of xhat, which is 0: the variance term vanishes, and the wrong backward agrees
    # with the finite differences (both are 0). Hence the random upstream gradient.
    ones = np.ones(x.shape)
    assert np.abs(_batchnorm_dx_missing("variance", ones, cache) - dx_numeric(ones)).max() < 1e-6


@pytest.mark.parametrize("relu", [True, False])
@given(batchnorm_cases())
def test_batchnorm_relu_is_batch_norm_then_relu(relu, case):
    """The composition of skscratch.layers against the loops, and its backward against its
    parts' backward passes run in reverse order (the parts' gradients are checked above)."""
    a = case.arrays()
    out, new_mean, new_var, cache = batchnorm_relu_forward(**a, training=case.training, relu=relu)
    expected_out, expected_mean, expected_var = reference.batchnorm(**a, training=case.training)
    if relu:
        expected_out = reference.relu(expected_out)
    np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new_var, expected_var, rtol=1e-12, atol=1e-14)

    dout = np.random.default_rng(case.seed + 1).standard_normal(case.shape)
    bn_out, _, _, bn_cache = batchnorm_forward(**a, training=case.training)
    d = relu_backward(dout, relu_forward(bn_out)[1]) if relu else dout
    for got, expected in zip(
        batchnorm_relu_backward(dout, cache), batchnorm_backward(d, bn_cache), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


# --- ReLU --------------------------------------------------------------------------------------


@given(any_shapes(), seeds)
def test_relu_forward_matches_loops(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    out, _ = relu_forward(x)
    np.testing.assert_array_equal(out, reference.relu(x))


@given(any_shapes(), seeds)
def test_relu_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    # ReLU's kink at 0 makes finite differences lie: an input within h of 0 would have its
    # centred difference straddle the kink and come out near 1/2. Keep every input at least
    # 0.1 away from 0, far beyond h = 1e-6.
    x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)
    errors = check_gradients(relu_forward, relu_backward, {"x": x}, seed=seed + 1)
    assert_gradients_match(errors, ["x"])


@given(any_shapes(), seeds)
def test_add_relu_is_the_relu_of_the_sum(shape, seed):
    rng = np.random.default_rng(seed)
    x, residual = rng.standard_normal(shape), rng.standard_normal(shape)
    out, cache = add_relu_forward(x, residual)
    np.testing.assert_array_equal(out, reference.relu(x + residual))
    assert cache.out is out


def _add_relu_backward(dout, cache):
    """add_relu_forward's backward: relu_backward's dx is the gradient of both terms."""
    dx = relu_backward(dout, cache)
    return dx, dx


@given(any_shapes(), seeds)
def test_add_relu_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    # The sum is kept at least 0.1 away from ReLU's kink (see test_relu_gradients).
    total = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)
    residual = rng.standard_normal(shape)
    inputs = {"x": total - residual, "residual": residual}
    errors = check_gradients(add_relu_forward, _add_relu_backward, inputs, seed=seed + 1)
    assert_gradients_match(errors, inputs)


def test_relu_gradient_at_zero_is_zero():
    _, cache = relu_forward(np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(relu_backward(np.ones(3), cache), [0.0, 0.0, 1.0])


# --- global average pooling --------------------------------------------------------------------


@given(nchw_shapes(), seeds)
def test_global_avg_pool_forward_matches_loops(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    out, _ = global_avg_pool_forward(x)
    np.testing.assert_allclose(out, reference.global_avg_pool(x), rtol=1e-12, atol=1e-15)


@given(nchw_shapes(), seeds)
def test_global_avg_pool_gradients(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    errors = check_gradients(
        global_avg_pool_forward, global_avg_pool_backward, {"x": x}, seed=seed + 1
    )
    assert_gradients_match(errors, ["x"])


# --- linear ------------------------------------------------------------------------------------


@given(linear_shapes(), st.booleans(), seeds)
def test_linear_forward_matches_loops(shape, bias, seed):
    n, d_in, d_out = shape
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, d_in)), rng.standard_normal((d_out, d_in))
    b = rng.standard_normal(d_out) if bias else None
    out, _ = linear_forward(x, w, b)
    np.testing.assert_allclose(out, reference.linear(x, w, b), rtol=1e-12, atol=1e-12)


@given(linear_shapes(), st.booleans(), seeds)
def test_linear_gradients(shape, bias, seed):
    n, d_in, d_out = shape
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, d_in)), "w": rng.standard_normal((d_out, d_in))}
    if bias:
        inputs["b"] = rng.standard_normal(d_out)
    errors = check_gradients(linear_forward, linear_backward, inputs, seed=seed + 1)
    assert_gradients_match(errors, inputs)


# --- softmax across branches -------------------------------------------------------------------


@given(branch_shapes(), seeds)
def test_branch_softmax_forward_matches_loops(shape, seed):
    z = np.random.default_rng(seed).standard_normal(shape) * 3
    a, _ = branch_softmax_forward(z)
    np.testing.assert_allclose(a, reference.branch_softmax(z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-12)


@given(branch_shapes(), seeds)
def test_branch_softmax_gradients(shape, seed):
    # Logits of unit scale: a saturated softmax has gradients near 1e-5, down where the rounding
    # of the finite differences (about 1e-10) is no longer negligible.
    z = np.random.default_rng(seed).standard_normal(shape)
    errors = check_gradients(
        branch_softmax_forward, branch_softmax_backward, {"logits": z}, seed=seed + 1
    )
    assert_gradients_match(errors, ["logits"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_branch_softmax_is_stable_for_huge_logits(dtype):
    z = np.random.default_rng(6).uniform(-1e4, 1e4, (2, 3, 4)).astype(dtype)
    a, _ = branch_softmax_forward(z)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, reference.branch_softmax(z.astype(np.float64)), atol=1e-6)


# --- softmax cross-entropy ---------------------------------------------------------------------


def _labels(rng, n, k):
    return rng.integers(0, k, n)


smoothings = st.sampled_from([0.0, 0.1, 0.2, 0.9])


@given(classification_shapes(), seeds, smoothings)
def test_cross_entropy_matches_loops(shape, seed, smoothing):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 3
    labels = _labels(rng, *shape)
    loss, dlogits = softmax_cross_entropy(z, labels, smoothing=smoothing)
    expected_loss, expected_grad = reference.softmax_cross_entropy(z, labels, smoothing)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(dlogits, expected_grad, rtol=1e-12, atol=1e-15)


def test_label_smoothing_is_a_mixture_of_the_label_and_the_uniform_targets():
    # q = (1 - eps) onehot + eps * uniform, and the loss is linear in q: the smoothed loss is
    # (1 - eps) * (the loss on the labels) + eps * (the mean of the losses on every class).
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4)) * 2
    labels = _labels(rng, 6, 4)
    eps = 0.3
    on_labels = softmax_cross_entropy(z, labels)[0]
    on_every_class = np.mean([softmax_cross_entropy(z, np.full(6, k))[0] for k in range(4)])
    loss = softmax_cross_entropy(z, labels, smoothing=eps)[0]
    assert loss == pytest.approx((1 - eps) * on_labels + eps * on_every_class, rel=1e-12)


def test_label_smoothing_is_least_at_the_smoothed_target():
    # The smoothed loss no longer rewards an ever larger margin: for eps = 0.2 and K = 4 it is
    # least where the softmax gives the label 1 - eps + eps/K = 0.85 and each other class 0.05,
    # that is at a logit gap of log(0.85 / 0.05) = log 17; there its gradient is zero.
    best = np.array([[np.log(17.0), 0.0, 0.0, 0.0]])
    label = np.array([0])
    loss, dlogits = softmax_cross_entropy(best, label, smoothing=0.2)
    np.testing.assert_allclose(dlogits, 0.0, atol=1e-15)
    for gap in (1.0, 2.0, 4.0, 8.0):
        other = softmax_cross_entropy(np.array([[gap, 0.0, 0.0, 0.0]]), label, smoothing=0.2)[0]
        assert other > loss


def _cross_entropy_forward(logits, labels, smoothing=0.0):
    """The loss as a 0-d output, with dlogits as the 'cache', for check_gradients."""
    loss, dlogits = softmax_cross_entropy(logits, labels, smoothing=smoothing)
    return np.array(loss), dlogits


def _cross_entropy_backward(dloss, dlogits):
    return dloss * dlogits


@given(classification_shapes(), seeds, smoothings)
def test_cross_entropy_gradients(shape, seed, smoothing):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)  # unit scale, as for the branch softmax
    errors = check_gradients(
        _cross_entropy_forward,
        _cross_entropy_backward,
        {"logits": z},
        fixed={"labels": _labels(rng, *shape), "smoothing": smoothing},
        seed=seed + 1,
    )
    assert_gradients_match(errors, ["logits"])


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_cross_entropy_is_stable_for_huge_logits(dtype, rtol):
    rng = np.random.default_rng(7)
    z = rng.uniform(-1e4, 1e4, (6, 5)).astype(dtype)
    z[0, :2] = [1e4, 1e4 - 1]  # a near tie among huge logits: both terms of the sum matter
    labels = _labels(rng, 6, 5)
    loss, dlogits = softmax_cross_entropy(z, labels)
    # The reference works in float64 on the same (possibly float32-rounded) logits, taking the
    # log-sum-exp as max + log(fsum(exp(z - max))).
    expected_loss, expected_grad = reference.softmax_cross_entropy(z.astype(np.float64), labels)
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected_loss, rel=rtol)
    assert np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(dlogits, expected_grad, rtol=rtol, atol=10 * rtol)


def test_cross_entropy_of_extreme_logits_is_exact():
    z = np.array([[1e4, -1e4, 0.0]])
    # exp(1e4) overflows: a naive softmax gives inf / inf = nan here.
    assert softmax_cross_entropy(z, np.array([0]))[0] == pytest.approx(0.0, abs=1e-12)
    assert softmax_cross_entropy(z, np.array([1]))[0] == pytest.approx(2e4, rel=1e-12)
    loss, dlogits = softmax_cross_entropy(z, np.array([2]))
    assert loss == pytest.approx(1e4, rel=1e-12)
    np.testing.assert_allclose(dlogits, [[1.0, 0.0, -1.0]], atol=1e-12)


# --- every pair of both backends: dtypes, untouched inputs, read-only and non-contiguous arrays -


@dataclass(frozen=True)
class Op:
    """One operation run forward then backward on fixed shapes.

    make(rng, dtype) -> {name: array} holds the inputs and the upstream gradient;
    run(arrays) -> {name: output} holds every output and gradient.
    """

    name: str
    make: Callable[[np.random.Generator, type], dict]
    run: Callable[[dict], dict]

    def __repr__(self):
        return self.name


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


WINDOW_OPTIONS = {"stride": (2, 1), "padding": (1, 0), "dilation": 1}


def _make_conv(x_shape, w_shape, out_shape):
    def make(rng, dtype):
        return {
            "x": _normal(rng, x_shape, dtype),
            "w": _normal(rng, w_shape, dtype),
            "b": _normal(rng, w_shape[0], dtype),
            "dout": _normal(rng, out_shape, dtype),
        }

    return make


def _run_conv(version, **options):
    forward, backward = conv_pair(version)

    def run(a):
        out, cache = forward(a["x"], a["w"], a["b"], **options)
        dx, dw, db = backward(a["dout"], cache)
        return {"out": out, "dx": dx, "dw": dw, "db": db}

    return run


def _make_batchnorm(shape):
    def make(rng, dtype):
        c = shape[1]
        return {
            "x": _normal(rng, shape, dtype),
            "gamma": rng.uniform(0.5, 2, c).astype(dtype),
            "beta": _normal(rng, c, dtype),
            "running_mean": _normal(rng, c, dtype),
            "running_var": rng.uniform(0.5, 2, c).astype(dtype),
            "dout": _normal(rng, shape, dtype),
        }

    return make


def _run_batchnorm(ops: Backend, training: bool, relu: bool | None = None):
    """Batch norm alone (relu None), or batchnorm_relu_forward with that relu."""
    if relu is None:
        forward, backward, options = ops.batchnorm_forward, ops.batchnorm_backward, {}
    else:
        forward, backward = ops.batchnorm_relu_forward, ops.batchnorm_relu_backward
        options = {"relu": relu}

    def run(a):
        params = {k: a[k] for k in ("gamma", "beta", "running_mean", "running_var")}
        out, new_mean, new_var, cache = forward(a["x"], **params, training=training, **options)
        dx, dgamma, dbeta = backward(a["dout"], cache)
        return {
            "out": out,
            "running_mean": new_mean,
            "running_var": new_var,
            "dx": dx,
            "dgamma": dgamma,
            "dbeta": dbeta,
        }

    return run


def _run_relu(ops: Backend):
    def run(a):
        out, cache = ops.relu_forward(a["x"])
        return {"out": out, "dx": ops.relu_backward(a["dout"], cache)}

    return run


def _run_add_relu(ops: Backend):
    def run(a):
        out, cache = ops.add_relu_forward(a["x"], a["residual"])
        return {"out": out, "dx": ops.relu_backward(a["dout"], cache)}

    return run


def _run_pool(a):
    out, cache = global_avg_pool_forward(a["x"])
    return {"out": out, "dx": global_avg_pool_backward(a["dout"], cache)}


def _run_linear(a):
    out, cache = linear_forward(a["x"], a["w"], a["b"])
    dx, dw, db = linear_backward(a["dout"], cache)
    return {"out": out, "dx": dx, "dw": dw, "db": db}


def _run_branch_softmax(a):
    out, cache = branch_softmax_forward(a["logits"])
    return {"a": out, "dlogits": branch_softmax_backward(a["da"], cache)}


def _run_cross_entropy(a):
    loss, dlogits = softmax_cross_entropy(a["logits"], a["labels"])
    return {"loss": loss, "dlogits": dlogits}


def _run_im2col(backend: str):
    if backend == "reference":
        gather, scatter = im2col, col2im
    else:
        from skscratch.fast import im2col as fast_im2col

        gather, scatter = fast_im2col.im2col, fast_im2col.col2im

    def run(a):
        return {
            "cols": gather(a["x"], 2, 3, **WINDOW_OPTIONS),
            "dx": scatter(a["cols"], a["x"].shape, 2, 3, **WINDOW_OPTIONS),
        }

    return run


def _ops_of(backend: str) -> list[Op]:
    """The pairs of a backend that differ from the other backend's, each on a few shapes."""
    ops = get_backend(backend)
    versions = [v for v in CONV_VERSIONS if v.split("-")[0] == backend]
    like = {"x": (3, 4), "residual": (3, 4), "dout": (3, 4)}
    run_twice = [
        # Strided, and stride 1: the two may take different code paths inside a convolution.
        (
            "conv2d_strided",
            _make_conv((2, 4, 6, 5), (6, 2, 3, 2), (2, 6, 3, 5)),
            lambda v: _run_conv(v, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
        ),
        (
            "conv2d_grouped_stride1",
            _make_conv((2, 4, 5, 5), (4, 2, 3, 3), (2, 4, 5, 5)),
            lambda v: _run_conv(v, padding=(2, 1), dilation=(2, 1), groups=2),
        ),
        (
            "conv2d_dense_stride1",
            _make_conv((1, 3, 4, 4), (2, 3, 3, 3), (1, 2, 4, 4)),
            lambda v: _run_conv(v, padding=1),
        ),
        (
            "conv2d_1x1_stride2",
            _make_conv((2, 4, 5, 4), (3, 4, 1, 1), (2, 3, 3, 2)),
            lambda v: _run_conv(v, stride=2),
        ),
    ]
    return [
        *[Op(f"{name}[{v}]", make, run(v)) for name, make, run in run_twice for v in versions],
        Op(
            f"batchnorm_train_nchw[{backend}]",
            _make_batchnorm((3, 2, 2, 2)),
            _run_batchnorm(ops, True),
        ),
        Op(f"batchnorm_eval_nc[{backend}]", _make_batchnorm((4, 3)), _run_batchnorm(ops, False)),
        Op(
            f"batchnorm_relu_train_nc[{backend}]",
            _make_batchnorm((5, 3)),
            _run_batchnorm(ops, True, relu=True),
        ),
        Op(
            f"batchnorm_relu_eval_nchw[{backend}]",
            _make_batchnorm((2, 3, 2, 3)),
            _run_batchnorm(ops, False, relu=True),
        ),
        Op(
            f"relu[{backend}]",
            lambda rng, dt: {"x": _normal(rng, (3, 4), dt), "dout": _normal(rng, (3, 4), dt)},
            _run_relu(ops),
        ),
        Op(
            f"add_relu[{backend}]",
            lambda rng, dt: {k: _normal(rng, shape, dt) for k, shape in like.items()},
            _run_add_relu(ops),
        ),
        Op(
            f"im2col_col2im[{backend}]",
            # x: (2, 3, 5, 4) with a 2x3 kernel gives a 3x2 output, so cols is (2, 3*2*3, 3*2).
            lambda rng, dt: {
                "x": _normal(rng, (2, 3, 5, 4), dt),
                "cols": _normal(rng, (2, 18, 6), dt),
            },
            _run_im2col(backend),
        ),
    ]


OPS = [
    *(op for backend in BACKENDS for op in _ops_of(backend)),
    # The same pairs in both backends.
    Op(
        "global_avg_pool",
        lambda rng, dt: {"x": _normal(rng, (2, 3, 2, 2), dt), "dout": _normal(rng, (2, 3), dt)},
        _run_pool,
    ),
    Op(
        "linear",
        lambda rng, dt: {
            "x": _normal(rng, (3, 4), dt),
            "w": _normal(rng, (2, 4), dt),
            "b": _normal(rng, 2, dt),
            "dout": _normal(rng, (3, 2), dt),
        },
        _run_linear,
    ),
    Op(
        "branch_softmax",
        lambda rng, dt: {
            "logits": _normal(rng, (2, 3, 4), dt),
            "da": _normal(rng, (2, 3, 4), dt),
        },
        _run_branch_softmax,
    ),
    Op(
        "softmax_cross_entropy",
        lambda rng, dt: {"logits": _normal(rng, (3, 5), dt), "labels": np.array([0, 4, 2])},
        _run_cross_entropy,
    ),
]


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(op, dtype):
    outputs = op.run(op.make(np.random.default_rng(8), dtype))
    for name, value in outputs.items():
        if name == "loss":
            assert isinstance(value, float)
        else:
            assert value.dtype == dtype, f"{op.name}: {name} is {value.dtype}, not {dtype}"


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_inputs_are_not_modified(op):
    arrays = op.make(np.random.default_rng(9), np.float64)
    before = {name: a.copy() for name, a in arrays.items()}
    op.run(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, before[name], err_msg=f"{op.name} modified {name}")


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_read_only_inputs_are_accepted(op):
    arrays = op.make(np.random.default_rng(10), np.float64)
    expected = op.run(arrays)
    frozen = {}
    for name, a in arrays.items():
        frozen[name] = a.copy()
        frozen[name].flags.writeable = False
    _assert_same_outputs(op.run(frozen), expected, exact=True)


def _non_contiguous(a):
    """A view with a's values whose elements are not adjacent in memory."""
    spaced = np.zeros((*a.shape, 2), dtype=a.dtype)
    spaced[..., 0] = a
    view = spaced[..., 0]
    assert not view.flags.c_contiguous or view.size <= 1
    return view


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_non_contiguous_inputs_are_accepted(op):
    arrays = op.make(np.random.default_rng(11), np.float64)
    expected = op.run(arrays)
    strided = {name: _non_contiguous(a) for name, a in arrays.items()}
    # Sums may run in a different order over a different memory layout: equal up to rounding.
    _assert_same_outputs(op.run(strided), expected, exact=False)


def _assert_same_outputs(got, expected, *, exact):
    assert got.keys() == expected.keys()
    for name in expected:
        if exact:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-14)
