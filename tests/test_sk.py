"""The SK unit (Split, Fuse, Select) as a forward/backward pair.

The forward is compared with a recomputation written out below in plain NumPy, step by step as
SKNET.md states it (its convolution is a sum of shifted slices, not im2col); the backward with
centred finite differences in float64, for every input and parameter, on shapes from a hypothesis
strategy that only builds valid cases. The checks of what the unit returns, keeps and refuses
run on both backends; test_fast.py shows that the fast unit's results equal these.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import (
    M2_STRIDE1_EVAL,
    M2_STRIDE2_EVAL,
    M3_STRIDE1_TRAIN,
    M3_STRIDE2_TRAIN,
    SKCase,
    sk_cases,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from skscratch.backends import BACKENDS, get_backend
from skscratch.gradcheck import check_gradients
from skscratch.sk import sk_hidden_size, sk_param_shapes, sk_unit_backward, sk_unit_forward

BN_STATS = ("running_mean", "running_var")
GRAD_TOL = 1e-6
# The tests of what the unit returns and refuses run on both backends (test_fast.py shows that
# their results agree); the recomputation by hand and the gradient checks on the reference.
on_both_backends = pytest.mark.parametrize("backend", BACKENDS)


# ------------------------------------------------------------------- the recomputation, by hand


def conv_by_taps(x, w, *, stride, dilation, groups):
    """A k x k grouped convolution (k odd) with padding dilation (k - 1) / 2, which keeps the
    size, as a sum over the k * k taps.

    Tap (i, j) of output (oy, ox) reads padded input (oy*stride + i*dilation, ox*stride +
    j*dilation): one strided slice of the padded input per tap, multiplied into the weights.
    """
    n, c_in, h, wd = x.shape
    c_out, k = w.shape[0], w.shape[-1]
    cg_in, cg_out = c_in // groups, c_out // groups
    d, pad = dilation, dilation * (k - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.zeros((n, c_out, ho, wo))
    for g in range(groups):
        cin, cout = slice(g * cg_in, (g + 1) * cg_in), slice(g * cg_out, (g + 1) * cg_out)
        for i in range(k):
            for j in range(k):
                patch = xp[
                    :,
                    cin,
                    i * d : i * d + stride * (ho - 1) + 1 : stride,
                    j * d : j * d + stride * (wo - 1) + 1 : stride,
                ]  # (N, C_in/G, H', W')
                out[:, cout] += np.einsum("nchw,oc->nohw", patch, w[cout, :, i, j])
    return out


def batch_norm(x, p, prefix, *, training, momentum=0.1, eps=1e-5):
    """PyTorch's batch norm: returns out and the new running mean and variance."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    rm, rv = p[f"{prefix}.running_mean"], p[f"{prefix}.running_var"]
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        count = x.size // x.shape[1]
        new_rm = (1 - momentum) * rm + momentum * mean
        new_rv = (1 - momentum) * rv + momentum * var * count / (count - 1)
    else:
        mean, var, new_rm, new_rv = rm, rv, rm, rv
    xhat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    out = p[f"{prefix}.weight"].reshape(shape) * xhat + p[f"{prefix}.bias"].reshape(shape)
    return out, {f"{prefix}.running_mean": new_rm, f"{prefix}.running_var": new_rv}


def sk_by_hand(x, p, *, stride, groups, training, dilations=None):
    """Split, Fuse, Select, as SKNET.md writes them. Returns V, a (N, M, C), running stats."""
    n_branches = sum(1 for k in p if k.startswith("convs."))
    dilations = range(1, n_branches + 1) if dilations is None else dilations
    stats = {}
    # Split: branch m has dilation m + 1 (the first is a plain 3x3) unless dilations say
    # otherwise, then BN and ReLU.
    branches = []
    for m, d in enumerate(dilations):
        u = conv_by_taps(x, p[f"convs.{m}.weight"], stride=stride, dilation=d, groups=groups)
        u, new = batch_norm(u, p, f"bns.{m}", training=training)
        stats |= new
        branches.append(np.maximum(u, 0))
    # Fuse: sum, global average pool, FC, BN, ReLU.
    s = sum(branches).mean(axis=(2, 3))  # (N, C)
    z, new = batch_norm(s @ p["fc.weight"].T, p, "fc_bn", training=training)
    stats |= new
    z = np.maximum(z, 0)  # (N, d)
    # Select: M logits per channel, softmax over the branches, weighted sum.
    n, c = s.shape
    logits = (z @ p["select.weight"].T).reshape(n, n_branches, c)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    v = sum(a[:, m, :, None, None] * u for m, u in enumerate(branches))
    return v, a, stats


# --------------------------------------------------------------------------------- the forward


@given(sk_cases(min_n=2))
@settings(max_examples=25, deadline=None)
def test_forward_equals_the_recomputation_by_hand(case):
    x, params = case.arrays()
    out, cache = sk_unit_forward(x, params, **case.options)
    v, a, stats = sk_by_hand(x, params, **case.options)
    ho, wo = (case.h - 1) // case.stride + 1, (case.w - 1) // case.stride + 1
    assert out.shape == (case.n, case.channels, ho, wo)
    np.testing.assert_allclose(out, v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.a, a, rtol=1e-10, atol=1e-12)
    assert set(cache.running_stats) == set(stats)
    for key, value in stats.items():
        np.testing.assert_allclose(cache.running_stats[key], value, rtol=1e-10, atol=1e-12)


@given(sk_cases(min_n=1), st.floats(-30, 30))
@settings(max_examples=30, deadline=None)
def test_attention_is_a_softmax_over_the_branches(case, logit_scale):
    """a has shape (N, M, C), is positive and sums to 1 over M, also for large logits."""
    x, params = case.arrays()
    params["select.weight"] = params["select.weight"] * logit_scale
    _, cache = sk_unit_forward(x, params, **case.options)
    a = cache.a
    assert a.shape == (case.n, case.branches, case.channels)
    assert a.dtype == np.float64
    assert np.all(np.isfinite(a)) and np.all(a >= 0)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if abs(logit_scale) < 5:  # moderate logits: no weight underflows to exactly 0
        assert np.all(a > 0)


@on_both_backends
def test_zero_select_weights_average_the_branches(backend):
    """Equal logits give a = 1/M per channel, and V is the mean of the branches U_m."""
    case = M3_STRIDE2_TRAIN
    x, params = case.arrays()
    params["select.weight"] = np.zeros_like(params["select.weight"])
    out, cache = get_backend(backend).sk_unit_forward(x, params, **case.options)
    np.testing.assert_allclose(cache.a, 1 / 3, rtol=1e-15)
    np.testing.assert_allclose(out, np.mean(cache.branches, axis=0), rtol=1e-12, atol=1e-15)


@on_both_backends
def test_the_number_of_branches_comes_from_the_params(backend):
    forward = get_backend(backend).sk_unit_forward
    x, params = M2_STRIDE1_EVAL.arrays()
    _, cache = forward(x, params, **M2_STRIDE1_EVAL.options)
    assert cache.a.shape[1] == 2 and len(cache.branches) == 2
    x, params = M3_STRIDE1_TRAIN.arrays()
    _, cache = forward(x, params, **M3_STRIDE1_TRAIN.options)
    assert cache.a.shape[1] == 3 and len(cache.branches) == 3


@on_both_backends
@pytest.mark.parametrize("training", [True, False])
def test_running_stats_are_returned_and_params_left_alone(training, backend):
    case = SKCase(4, 4, 5, 5, branches=2, groups=2, stride=1, r=2, L=2, training=training, seed=5)
    x, params = case.arrays()
    params_before = copy.deepcopy(params)
    x_before = x.copy()
    ops = get_backend(backend)
    out, cache = ops.sk_unit_forward(x, params, **case.options)
    dout = np.random.default_rng(0).standard_normal(out.shape)
    dout_before = dout.copy()
    ops.sk_unit_backward(dout, cache)
    np.testing.assert_array_equal(dout, dout_before)

    # The caller's dict and arrays are untouched: same keys, same objects' values.
    assert set(params) == set(params_before)
    for key in params:
        np.testing.assert_array_equal(params[key], params_before[key])
    np.testing.assert_array_equal(x, x_before)

    stats = cache.running_stats
    stat_keys = {k for k in params if k.endswith(BN_STATS)}
    assert set(stats) == stat_keys  # 2 per branch batch norm and 2 for fc_bn
    for key in stat_keys:
        assert stats[key] is not params[key]
        assert stats[key].shape == params[key].shape
        moved = not np.allclose(stats[key], params[key])
        assert moved == training, key
    # The returned statistics are new arrays: changing them does not reach the caller.
    for value in stats.values():
        value += 1.0
    for key in params:
        np.testing.assert_array_equal(params[key], params_before[key])


def test_running_stats_follow_pytorch_momentum_and_unbiased_variance():
    """One step from running (0, 1) with momentum 0.1: 0.1 * mean and 0.9 + 0.1 * unbiased var."""
    case = SKCase(3, 2, 4, 4, branches=2, groups=1, stride=1, r=1, L=2, training=True, seed=6)
    x, params = case.arrays()
    for key in params:
        if key.endswith("running_mean"):
            params[key] = np.zeros_like(params[key])
        elif key.endswith("running_var"):
            params[key] = np.ones_like(params[key])
    _, cache = sk_unit_forward(x, params, **case.options, momentum=0.1)
    pre = conv_by_taps(x, params["convs.0.weight"], stride=1, dilation=1, groups=1)
    np.testing.assert_allclose(
        cache.running_stats["bns.0.running_mean"], 0.1 * pre.mean(axis=(0, 2, 3)), rtol=1e-12
    )
    np.testing.assert_allclose(
        cache.running_stats["bns.0.running_var"],
        0.9 + 0.1 * pre.var(axis=(0, 2, 3), ddof=1),
        rtol=1e-12,
    )


@on_both_backends
def test_float32_in_float32_out(backend):
    ops = get_backend(backend)
    case = M3_STRIDE2_TRAIN
    x64, p64 = case.arrays()
    x, params = case.arrays(np.float32)
    out, cache = ops.sk_unit_forward(x, params, **case.options)
    assert out.dtype == np.float32 and cache.a.dtype == np.float32
    assert all(v.dtype == np.float32 for v in cache.running_stats.values())
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    dx, grads = ops.sk_unit_backward(dout, cache)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(g.dtype == np.float32 for g in grads.values())
    # And the float32 result is the float64 one, to float32 precision.
    out64, cache64 = ops.sk_unit_forward(x64, p64, **case.options)
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)
    dx64, grads64 = ops.sk_unit_backward(dout.astype(np.float64), cache64)
    np.testing.assert_allclose(dx, dx64, rtol=1e-3, atol=1e-4)
    for key, g in grads.items():
        np.testing.assert_allclose(g, grads64[key], rtol=1e-3, atol=1e-4, err_msg=key)


# -------------------------------------------------------------------------------- the backward


def _away_from_kinks(forward, inputs: dict, margin: float = 1e-4) -> None:
    """Shift the bias of every batch norm followed by a ReLU (the branches' and fc_bn) up so that
    no pre-activation lies within `margin` of 0.

    A finite difference that moves a pre-activation across 0 measures the ReLU's kink, not the
    gradient: with a value 5e-7 from 0, a random case gave relative errors of 0.08. Shifting a
    bias by a multiple of 1e-3 moves all of that channel's values alike and changes nothing else.
    """
    _, cache = forward(**inputs)
    for m, (_, bn_cache, _) in enumerate(cache.branch_caches):  # (conv, batch norm, ReLU)
        # gamma * xhat: the pre-activation without the bias, (C, N*H*W)
        pre = (bn_cache.xhat * bn_cache.gamma[:, None, None]).swapaxes(0, 1)
        _shift_bias(inputs, f"bns.{m}.bias", pre.reshape(len(bn_cache.gamma), -1), margin)
    # The branches' biases change what reaches the fuse step: look at fc_bn after them.
    _, cache = forward(**inputs)
    fc_bn = cache.fc_bn_cache  # batchnorm_forward's cache: xhat (N, d) and gamma
    # Here also open the ReLU for at least one image per channel: with all of a channel's
    # pre-activations below 0 the fuse path is closed and its gradients are exactly 0.
    _shift_bias(inputs, "fc_bn.bias", (fc_bn.xhat * fc_bn.gamma).T, margin, open_path=True)


def _shift_bias(inputs: dict, key: str, pre: np.ndarray, margin: float, open_path=False) -> None:
    bias = inputs[key].copy()
    for c in range(len(bias)):
        for step in range(5000):
            shifted = bias[c] + step * 1e-3
            values = pre[c] + shifted
            if np.abs(values).min() >= margin and (values.max() > 0 or not open_path):
                bias[c] = shifted
                break
    inputs[key] = bias


# Without _away_from_kinks, a pre-activation of branch 0 lies 5e-7 from 0 in this case.
NEAR_A_KINK = SKCase(
    n=3,
    channels=2,
    h=7,
    w=5,
    branches=3,
    groups=1,
    stride=1,
    r=1,
    L=2,
    training=False,
    seed=1142869,
)
# Here the fuse path is closed for every image until fc_bn's bias is shifted.
FUSE_CLOSED = SKCase(
    n=3,
    channels=2,
    h=4,
    w=4,
    branches=2,
    groups=2,
    stride=1,
    r=1,
    L=2,
    training=False,
    seed=102170021,
)
# Small gradients (bns.1.weight ~1e-2): with h = 1e-6 rounding gave a relative error of 1.4e-5.
SMALL_GRADIENTS = SKCase(
    n=3, channels=2, h=4, w=4, branches=2, groups=2, stride=1, r=1, L=2, training=False, seed=165
)


@given(sk_cases())
@example(M3_STRIDE2_TRAIN)
@example(M2_STRIDE1_EVAL)
@example(M2_STRIDE2_EVAL)
@example(M3_STRIDE1_TRAIN)
@example(NEAR_A_KINK)
@example(FUSE_CLOSED)
@example(SMALL_GRADIENTS)
@settings(max_examples=12, deadline=None)
def test_gradients_match_finite_differences(case):
    """Every input and parameter, 24 sampled entries each, relative error < 1e-6.

    ReLU kinks are kept at least 1e-4 away from every pre-activation (`_away_from_kinks`), far
    more than a step of h = 1e-5 moves one. That step, rather than 1e-6, keeps the rounding
    error of the differences (about eps * |L| / h) small next to small gradients.
    """
    x, params = case.arrays()
    stats = {k: v for k, v in params.items() if k.endswith(BN_STATS)}
    inputs = {"x": x} | {k: v for k, v in params.items() if k not in stats}

    def forward(x, **learned):
        return sk_unit_forward(x, learned | stats, **case.options)

    _away_from_kinks(forward, inputs)

    def backward(dout, cache):
        dx, grads = sk_unit_backward(dout, cache)
        assert set(grads) == set(inputs) - {"x"}  # one gradient per parameter, none for stats
        return {"x": dx, **grads}

    out, cache = forward(**inputs)
    grads = backward(np.random.default_rng(case.seed).standard_normal(out.shape), cache)
    vanishing = [k for k, g in grads.items() if not np.abs(g).max() > 1e-6]
    assert not vanishing, f"gradients ~0, so the check would say nothing: {vanishing}"

    errors = check_gradients(forward, backward, inputs, h=1e-5, max_entries=24, seed=case.seed + 1)
    assert set(errors) == set(inputs)
    bad = {k: v for k, v in errors.items() if not v < GRAD_TOL}
    assert not bad, f"relative errors above {GRAD_TOL}: {bad}"


@on_both_backends
def test_backward_shapes_and_keys(backend):
    ops = get_backend(backend)
    case = M3_STRIDE2_TRAIN
    x, params = case.arrays()
    out, cache = ops.sk_unit_forward(x, params, **case.options)
    dx, grads = ops.sk_unit_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape
    learned = {k for k in params if not k.endswith(BN_STATS)}
    assert set(grads) == learned
    for key in learned:
        assert grads[key].shape == params[key].shape, key


@on_both_backends
def test_backward_refuses_a_dout_of_the_wrong_shape(backend):
    ops = get_backend(backend)
    case = M2_STRIDE1_EVAL
    x, params = case.arrays()
    out, cache = ops.sk_unit_forward(x, params, **case.options)
    with pytest.raises(ValueError, match="dout must have shape"):
        ops.sk_unit_backward(np.ones(out.shape[:-1] + (out.shape[-1] + 1,)), cache)


# ---------------------------------------------------------------------------- parameter shapes


@given(
    branches=st.integers(1, 4),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 8),
    r=st.integers(1, 32),
    L=st.integers(1, 64),
)
@settings(max_examples=50, deadline=None)
def test_param_shapes_use_d_equal_max_of_c_over_r_and_L(branches, groups, per_group, r, L):
    c = groups * per_group
    d = max(c // r, L)
    assert sk_hidden_size(c, r, L) == d
    shapes = sk_param_shapes(c, branches=branches, groups=groups, r=r, L=L)
    expected = {}
    for m in range(branches):
        expected[f"convs.{m}.weight"] = (c, c // groups, 3, 3)
        for key in ("weight", "bias", *BN_STATS):
            expected[f"bns.{m}.{key}"] = (c,)
    expected["fc.weight"] = (d, c)
    for key in ("weight", "bias", *BN_STATS):
        expected[f"fc_bn.{key}"] = (d,)
    expected["select.weight"] = (branches * c, d)
    assert shapes == expected


@pytest.mark.parametrize(("channels", "d"), [(128, 32), (256, 32), (512, 32), (1024, 64)])
def test_d_of_sknet50(channels, d):
    """SKNET.md: d is 32, 32, 32, 64 in SKNet-50's four stages (r = 16, L = 32)."""
    assert sk_hidden_size(channels) == d
    assert sk_param_shapes(channels)["fc.weight"] == (d, channels)


def test_param_shapes_refuse_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match=r"channels \(10\) must be divisible by groups \(4\)"):
        sk_param_shapes(10, groups=4)


# ---------------------------------------------------------------------------------- bad params

BAD_CASE = SKCase(3, 4, 5, 5, branches=2, groups=2, stride=1, r=2, L=2, training=True, seed=7)
BAD_KEYS = sorted(sk_param_shapes(4, branches=2, groups=2, r=2, L=2))


@on_both_backends
@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_missing_param_is_named(key, backend):
    x, params = BAD_CASE.arrays()
    del params[key]
    with pytest.raises((KeyError, ValueError)) as info:
        get_backend(backend).sk_unit_forward(x, params, **BAD_CASE.options)
    assert key in str(info.value), f"the error does not say which key is missing: {info.value}"


@on_both_backends
@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_param_of_the_wrong_shape_is_named(key, backend):
    x, params = BAD_CASE.arrays()
    shape = params[key].shape
    params[key] = np.ones((shape[0] + 1, *shape[1:]))
    with pytest.raises(ValueError) as info:
        get_backend(backend).sk_unit_forward(x, params, **BAD_CASE.options)
    assert key in str(info.value), f"the error does not say which key is wrong: {info.value}"


@on_both_backends
def test_params_without_any_branch_are_refused(backend):
    x, params = BAD_CASE.arrays()
    for key in [k for k in params if k.startswith("convs.")]:
        del params[key]
    with pytest.raises(ValueError, match="convs.0.weight"):
        get_backend(backend).sk_unit_forward(x, params, **BAD_CASE.options)


@on_both_backends
def test_a_branch_of_another_kernel_size_keeps_the_size_of_the_output(backend):
    # The ablations' branches: 3x3 and 5x5 (both dilation 1), then 3x3 with dilation 2 twice.
    for kernels, dilations in (((3, 5), (1, 1)), ((3, 3), (2, 2))):
        case = SKCase(3, 4, 7, 6, branches=2, groups=2, stride=2, r=1, L=2, training=True,
                      seed=5, kernels=kernels, dilations=dilations)  # fmt: skip
        x, params = case.arrays()
        assert params["convs.1.weight"].shape == (4, 2, kernels[1], kernels[1])
        out, cache = get_backend(backend).sk_unit_forward(x, params, **case.options)
        assert out.shape == (3, 4, 4, 3)
        v, a, _ = sk_by_hand(x, params, **case.options)
        np.testing.assert_allclose(out, v, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cache.a, a, rtol=1e-10, atol=1e-12)


@on_both_backends
@pytest.mark.parametrize(
    ("dilations", "message"),
    [((1,), r"one value per branch \(2\)"), ((1, 0), r"dilations\[1\] must be at least 1"),
     ((1, 2.0), r"dilations\[1\] must be an int")],
)  # fmt: skip
def test_wrong_dilations_are_refused(backend, dilations, message):
    x, params = BAD_CASE.arrays()
    options = BAD_CASE.options | {"dilations": dilations}
    with pytest.raises((ValueError, TypeError), match=message):
        get_backend(backend).sk_unit_forward(x, params, **options)


def test_kernel_sizes_must_be_odd_and_one_per_branch():
    assert sk_param_shapes(4, groups=2, kernel_sizes=(3, 5))["convs.1.weight"] == (4, 2, 5, 5)
    with pytest.raises(ValueError, match="must be odd"):
        sk_param_shapes(4, groups=2, kernel_sizes=(3, 4))
    with pytest.raises(ValueError, match="one value per branch"):
        sk_param_shapes(4, branches=3, groups=2, kernel_sizes=(3, 5))


@on_both_backends
def test_an_even_kernel_is_refused_by_name(backend):
    x, params = BAD_CASE.arrays()
    params["convs.1.weight"] = np.ones((*params["convs.1.weight"].shape[:2], 4, 4))
    with pytest.raises(ValueError, match=r"convs\.1\.weight.*kernel sizes \(3, 3\)"):
        get_backend(backend).sk_unit_forward(x, params, **BAD_CASE.options)
