"""Every forward/backward pair against independent references.

For each operation: the forward pass against the nested loops of tests/reference.py (and, for the
convolution, against scipy.signal.correlate); the backward pass against centred finite
differences in float64, weighted by a random upstream gradient; dtypes kept; inputs never
modified; read-only and non-contiguous inputs accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import reference
from conftest import (
    any_shapes,
    batchnorm_cases,
    branch_shapes,
    classification_shapes,
    conv_cases,
    linear_shapes,
    nchw_shapes,
    seeds,
)
from hypothesis import given
from hypothesis import strategies as st
from scipy import signal

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
    branch_softmax_backward,
    branch_softmax_forward,
    col2im,
    col2im_reference,
    conv2d_backward,
    conv2d_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    im2col,
    im2col_reference,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error

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
    # least 3 values per channel, see conftest.batchnorm_shapes.
    case = data.draw(batchnorm_cases(training=training, min_per_channel=3))
    a = case.arrays()
    inputs = {name: a[name] for name in ("x", "gamma", "beta")}
    fixed = {"running_mean": a["running_mean"], "running_var": a["running_var"]}
    errors = check_gradients(
        batchnorm_forward,
        batchnorm_backward,
        inputs,
        fixed={**fixed, "training": training},
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_batchnorm_relu_backward_masks_exactly_where_the_forward_output_is_zero(dtype):
    # The fused backward recomputes the ReLU mask from x rather than keeping the output. Inputs
    # within 64 ulps of the kink (scale * x + shift = 0) show any rounding that differs from
    # the forward's; in evaluation mode dx is nonzero exactly where the gradient passed.
    rng = np.random.default_rng(6)
    c = 3
    gamma = rng.uniform(0.5, 2, c).astype(dtype)
    beta, mean = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.5, 2, c).astype(dtype)
    kink = mean - beta * np.sqrt(var + 1e-5) / gamma  # where gamma * xhat + beta = 0
    ulps = rng.integers(-64, 65, (64, c, 4, 4))
    x = kink[None, :, None, None] + ulps * np.spacing(kink)[None, :, None, None]
    x = x.astype(dtype)
    out, _, _, cache = batchnorm_relu_forward(x, gamma, beta, mean, var, training=False)
    assert (out == 0).any() and (out > 0).any()
    dx, _, _ = batchnorm_relu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx != 0, out > 0)


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
def test_relu_of_a_sum_is_the_relu_of_the_sum(shape, seed):
    rng = np.random.default_rng(seed)
    x, residual = rng.standard_normal(shape), rng.standard_normal(shape)
    out, cache = relu_forward(x, residual)
    np.testing.assert_array_equal(out, reference.relu(x + residual))
    assert cache.out is out


def test_relu_residual_of_another_shape_or_dtype_is_refused():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="residual must have shape"):
        relu_forward(x, np.ones((3, 2)))
    with pytest.raises(TypeError, match="residual has dtype float32 but x has dtype float64"):
        relu_forward(x, np.ones((2, 3), np.float32))


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


@given(classification_shapes(), seeds)
def test_cross_entropy_matches_loops(shape, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 3
    labels = _labels(rng, *shape)
    loss, dlogits = softmax_cross_entropy(z, labels)
    expected_loss, expected_grad = reference.softmax_cross_entropy(z, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(dlogits, expected_grad, rtol=1e-12, atol=1e-15)


def _cross_entropy_forward(logits, labels):
    """The loss as a 0-d output, with dlogits as the 'cache', for check_gradients."""
    loss, dlogits = softmax_cross_entropy(logits, labels)
    return np.array(loss), dlogits


def _cross_entropy_backward(dloss, dlogits):
    return dloss * dlogits


@given(classification_shapes(), seeds)
def test_cross_entropy_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)  # unit scale, as for the branch softmax
    errors = check_gradients(
        _cross_entropy_forward,
        _cross_entropy_backward,
        {"logits": z},
        fixed={"labels": _labels(rng, *shape)},
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


# --- every operation: dtypes, untouched inputs, read-only and non-contiguous arrays ------------


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


def _run_conv(**options):
    def run(a):
        out, cache = conv2d_forward(a["x"], a["w"], a["b"], **options)
        dx, dw, db = conv2d_backward(a["dout"], cache)
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


def _run_batchnorm(training):
    def run(a):
        params = {k: a[k] for k in ("gamma", "beta", "running_mean", "running_var")}
        out, new_mean, new_var, cache = batchnorm_forward(a["x"], **params, training=training)
        dx, dgamma, dbeta = batchnorm_backward(a["dout"], cache)
        return {
            "out": out,
            "running_mean": new_mean,
            "running_var": new_var,
            "dx": dx,
            "dgamma": dgamma,
            "dbeta": dbeta,
        }

    return run


def _run_relu(a):
    out, cache = relu_forward(a["x"])
    return {"out": out, "dx": relu_backward(a["dout"], cache)}


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


def _run_im2col(a):
    return {
        "cols": im2col(a["x"], 2, 3, **WINDOW_OPTIONS),
        "cols_reference": im2col_reference(a["x"], 2, 3, **WINDOW_OPTIONS),
        "dx": col2im(a["cols"], a["x"].shape, 2, 3, **WINDOW_OPTIONS),
        "dx_reference": col2im_reference(a["cols"], a["x"].shape, 2, 3, **WINDOW_OPTIONS),
    }


OPS = [
    # Strided, and stride 1: the two may take different code paths inside conv2d_forward.
    Op(
        "conv2d_strided",
        _make_conv((2, 4, 6, 5), (6, 2, 3, 2), (2, 6, 3, 5)),
        _run_conv(stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
    ),
    Op(
        "conv2d_grouped_stride1",
        _make_conv((2, 4, 5, 5), (4, 2, 3, 3), (2, 4, 5, 5)),
        _run_conv(padding=(2, 1), dilation=(2, 1), groups=2),
    ),
    Op(
        "conv2d_dense_stride1",
        _make_conv((1, 3, 4, 4), (2, 3, 3, 3), (1, 2, 4, 4)),
        _run_conv(padding=1),
    ),
    Op("batchnorm_train_nchw", _make_batchnorm((3, 2, 2, 2)), _run_batchnorm(True)),
    Op("batchnorm_eval_nc", _make_batchnorm((4, 3)), _run_batchnorm(False)),
    Op(
        "relu",
        lambda rng, dt: {"x": _normal(rng, (3, 4), dt), "dout": _normal(rng, (3, 4), dt)},
        _run_relu,
    ),
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
    Op(
        "im2col_col2im",
        # x: (2, 3, 5, 4) with a 2x3 kernel gives a 3x2 output, so cols is (2, 3*2*3, 3*2).
        lambda rng, dt: {"x": _normal(rng, (2, 3, 5, 4), dt), "cols": _normal(rng, (2, 18, 6), dt)},
        _run_im2col,
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
