"""The fast backend (skscratch.fast) against the reference path: every compiled pair gives the
result of its plain-NumPy pair, forward and backward, on hypothesis-drawn shapes.

The reference pairs are checked against nested loops, scipy and finite differences in
test_ops.py and test_sk.py; here each fast pair is checked against them (im2col and col2im
against the loops of tests/reference.py too). Also here: what only the fast pairs have (the
convolution's algorithms, its `add_to`), float32 results against float64 ones, results that do
not depend on how the threads share the work, and the kernels run as plain Python.

The tests marked `nojit` run a second time in a subprocess with NUMBA_DISABLE_JIT=1, where the
kernels are ordinary Python functions: that shows the loops themselves are right, not just the
compiled code. `NUMBA_DISABLE_JIT=1 pytest tests/test_fast.py` runs the whole file that way.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import reference
from conftest import (
    CONV_VERSIONS,
    ConvCase,
    SKCase,
    Window,
    any_shapes,
    batchnorm_cases,
    conv_cases,
    conv_pair,
    seeds,
    sk_cases,
    windows,
)
from hypothesis import example, given
from hypothesis import strategies as st

from skscratch import batchnorm, fast, layers
from skscratch import im2col as reference_im2col
from skscratch.activations import relu_backward, relu_forward
from skscratch.backends import get_backend
from skscratch.fast import activations as fast_activations
from skscratch.fast import batchnorm as fast_batchnorm
from skscratch.fast import conv as fast_conv
from skscratch.fast import direct_backward, direct_forward, phases
from skscratch.fast import im2col as fast_im2col
from skscratch.fast import sk as fast_sk
from skscratch.im2col import col2im, im2col

FAST, REFERENCE = get_backend("fast"), get_backend("reference")
FAST_CONV = [v for v in CONV_VERSIONS if v != "reference"]
dtypes = st.sampled_from([np.float32, np.float64])
JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT") == "1"


def assert_close(actual, expected, rtol=1e-10, atol=1e-12, name=""):
    """Same dtype and shape, equal values up to the rounding of a different order of sums."""
    if expected is None:
        assert actual is None, name
        return
    assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


# --- im2col / col2im ---------------------------------------------------------------------------

# Wider than the convolution tests: dilations and strides up to 3 that rarely divide the input
# evenly, and padding up to 4, larger than any kernel (whole windows then read only padding).
kernel_windows = windows(max_kernel=4, max_stride=3, max_dilation=3, max_padding=4)

# Cases worth running every time, not only when hypothesis happens to find them.
PADDING_LARGER_THAN_KERNEL = Window(
    kh=2, kw=1, stride=(1, 2), padding=(4, 3), dilation=(1, 1), h=1, w=2
)
ONE_BY_ONE = Window(kh=1, kw=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1), h=3, w=2)
# A strided 1x1 window without padding (a shortcut's downsampling) takes a strided copy.
ONE_BY_ONE_STRIDED = Window(kh=1, kw=1, stride=(2, 3), padding=(0, 0), dilation=(1, 2), h=5, w=7)
# A padded 1x1 window is not a plain gather of pixels: it takes the general kernel.
ONE_BY_ONE_PADDED = Window(kh=1, kw=1, stride=(2, 1), padding=(1, 0), dilation=(1, 1), h=4, w=3)
UNEVEN_STRIDE_AND_DILATION = Window(
    kh=3, kw=2, stride=(3, 2), padding=(1, 0), dilation=(2, 3), h=8, w=7
)


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), dtypes, seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, np.float64, 0)
@example(ONE_BY_ONE, 2, 3, np.float32, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, np.float32, 0)
@example(ONE_BY_ONE_PADDED, 2, 2, np.float64, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, np.float64, 0)
def test_im2col_equals_the_reference_exactly(window, n, c, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, window.h, window.w)).astype(dtype)
    args = (x, window.kh, window.kw)
    cols = fast_im2col.im2col(*args, **window.options)
    ho, wo = window.out_hw
    assert cols.shape == (n, c * window.kh * window.kw, ho * wo)
    assert cols.dtype == dtype
    # A gather only copies values: any difference at all is a wrong index.
    assert np.array_equal(cols, im2col(*args, **window.options))
    assert np.array_equal(cols, reference.im2col(*args, **window.options))


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), dtypes, seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, np.float64, 0)
@example(ONE_BY_ONE, 2, 3, np.float32, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, np.float32, 0)
@example(ONE_BY_ONE_PADDED, 2, 2, np.float64, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, np.float64, 0)
def test_col2im_equals_the_reference(window, n, c, dtype, seed):
    ho, wo = window.out_hw
    rows = c * window.kh * window.kw
    cols = np.random.default_rng(seed).standard_normal((n, rows, ho * wo)).astype(dtype)
    x_shape = (n, c, window.h, window.w)
    args = (cols, x_shape, window.kh, window.kw)
    dx = fast_im2col.col2im(*args, **window.options)
    assert dx.shape == x_shape
    # Overlapping taps are added in another order than in the references: equal to rounding.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(dx, col2im(*args, **window.options), **tol)
    np.testing.assert_allclose(dx, reference.col2im(*args, **window.options), **tol)


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, 0)
def test_fast_col2im_is_the_adjoint_of_fast_im2col(window, n, c, seed):
    # <im2col(x), cols> == <x, col2im(cols)> for all x and cols: what makes col2im the backward
    # pass of im2col.
    rng = np.random.default_rng(seed)
    ho, wo = window.out_hw
    x = rng.standard_normal((n, c, window.h, window.w))
    cols = rng.standard_normal((n, c * window.kh * window.kw, ho * wo))
    opts = window.options
    lhs = np.sum(fast_im2col.im2col(x, window.kh, window.kw, **opts) * cols)
    rhs = np.sum(x * fast_im2col.col2im(cols, x.shape, window.kh, window.kw, **opts))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


# --- convolution -------------------------------------------------------------------------------


def _conv_results(version: str, a: dict, options: dict, dout: np.ndarray, **backward_options):
    """out, dx, dw, db of the convolution `version` on the arrays a, and its cache."""
    forward, backward = conv_pair(version)
    out, cache = forward(a["x"], a["w"], a["b"], **options)
    dx, dw, db = backward(dout, cache, **backward_options)
    return {"out": out, "dx": dx, "dw": dw, "db": db}, cache


def assert_conv_equals_the_reference(version: str, case: ConvCase, dtype=np.float64):
    a = case.arrays(dtype)
    options = case.options
    dout = _dout_for(case, dtype)
    expected, _ = _conv_results("reference", a, options, dout)
    got, cache = _conv_results(version, a, options, dout)
    algorithm = version.split("-")[1]
    c_in_g, kh, kw = a["w"].shape[1:]
    assert cache.algorithm == fast_conv.choose_algorithm(algorithm, c_in_g, kh * kw)
    for name, value in expected.items():
        assert_close(got[name], value, name=name)


def _dout_for(case: ConvCase, dtype):
    shape = (case.n, case.c_out, *case.window.out_hw)
    return np.random.default_rng(case.seed + 1).standard_normal(shape).astype(dtype)


def _conv_case(n, c_in, c_out, groups, window, bias=True, seed=0) -> ConvCase:
    return ConvCase(n, c_in, c_out, groups, window, bias, seed)


# The direct kernels have their own loops for 3x3 windows at stride 1 and at stride 2 (with
# dilations of one parity), and compute output channels in pairs and gather input channels in
# pairs: odd channel counts per group leave one over.
THREE_BY_THREE_STRIDE_1 = _conv_case(2, 6, 6, 2, Window(3, 3, (1, 1), (1, 1), (1, 1), h=5, w=6))
THREE_BY_THREE_DILATED = _conv_case(3, 3, 5, 1, Window(3, 3, (1, 1), (2, 2), (2, 2), h=4, w=7))
STRIDE_2_ODD_DILATION = _conv_case(2, 6, 6, 2, Window(3, 3, (2, 2), (1, 1), (1, 1), h=7, w=9))
STRIDE_2_EVEN_DILATION = _conv_case(2, 4, 6, 2, Window(3, 3, (2, 2), (2, 2), (2, 2), h=6, w=8))
STRIDE_2_DILATION_3 = _conv_case(2, 5, 5, 1, Window(3, 3, (2, 2), (3, 3), (3, 3), h=7, w=6))
STRIDE_2_MIXED_PARITY = _conv_case(1, 4, 4, 2, Window(3, 3, (2, 2), (1, 2), (1, 2), h=6, w=7))
STRIDE_2_ONE_COLUMN = _conv_case(1, 2, 2, 1, Window(3, 2, (2, 2), (1, 1), (1, 1), h=5, w=1))
# The network's stem: a dense convolution of 3 channels, which "auto" convolves directly.
DENSE_STEM = _conv_case(2, 3, 4, 1, Window(3, 3, (1, 1), (1, 1), (1, 1), h=6, w=6), bias=False)
# More than DIRECT_MAX_GROUP_WIDTH input channels per group: "auto" takes im2col.
WIDE_GROUP = _conv_case(1, 17, 2, 1, Window(3, 3, (1, 1), (1, 1), (1, 1), h=3, w=4))
POINTWISE_STRIDED = _conv_case(2, 4, 6, 2, ONE_BY_ONE_STRIDED)
POINTWISE_PADDED = _conv_case(2, 3, 2, 1, ONE_BY_ONE_PADDED)


@pytest.mark.nojit
@pytest.mark.parametrize("version", FAST_CONV)
@given(conv_cases(max_per_group=3, max_kernel=3, max_stride=3, max_dilation=3, max_padding=3))
@example(THREE_BY_THREE_STRIDE_1)
@example(THREE_BY_THREE_DILATED)
@example(STRIDE_2_ODD_DILATION)
@example(STRIDE_2_EVEN_DILATION)
@example(STRIDE_2_DILATION_3)
@example(STRIDE_2_MIXED_PARITY)
@example(STRIDE_2_ONE_COLUMN)
@example(DENSE_STEM)
@example(WIDE_GROUP)
@example(POINTWISE_STRIDED)
@example(POINTWISE_PADDED)
def test_conv_equals_the_reference(version, case):
    """Forward (with bias or not) and every gradient: grouped, strided, dilated, padded."""
    assert_conv_equals_the_reference(version, case)


# Stride 2 splits each row into even and odd columns in one pass: odd and even widths, with
# padding of either parity, and a plane a single column wide.
@pytest.mark.nojit
@given(
    windows(max_kernel=4, max_stride=3, max_dilation=3, max_padding=4),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 7),
    st.integers(1, 3),
    seeds,
)
@example(Window(3, 3, (2, 2), (1, 1), (1, 1), h=7, w=9), 2, 2, 3, 2, 0)
@example(Window(3, 3, (2, 2), (2, 2), (2, 2), h=6, w=8), 2, 2, 3, 2, 0)
@example(Window(3, 2, (2, 2), (1, 1), (1, 1), h=5, w=1), 1, 1, 2, 1, 0)
def test_direct_conv_over_blocks_of_images_equals_the_reference(
    window, groups, per_group, n, block, seed
):
    """The direct kernels run over blocks of images laid end to end; with blocks of 1-3 images,
    batches of up to 7 end in a partial block, and a wrong offset would mix images up."""
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x = rng.standard_normal((n, c, window.h, window.w))
    w = rng.standard_normal((c, per_group, window.kh, window.kw))
    opts = {**window.options, "groups": groups}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phases, "_BLOCK_VALUES", 1)  # every plane fills a block ...
        out, cache = fast.conv2d_forward(x, w, **opts, algorithm="direct")
        assert fast_conv._phases(cache).block == 1
        patch.setattr(phases, "_BLOCK_VALUES", block * fast_conv._phases(cache).size)
        out, cache = fast.conv2d_forward(x, w, **opts, algorithm="direct")  # ... or `block` do
        assert fast_conv._phases(cache).block == block
        dout = rng.standard_normal(out.shape)
        dx, dw, _ = fast.conv2d_backward(dout, cache)
    ref_out, ref_cache = REFERENCE.conv2d_forward(x, w, **opts)
    dx_ref, dw_ref, _ = REFERENCE.conv2d_backward(dout, ref_cache)
    assert_close(out, ref_out)
    assert_close(dx, dx_ref)
    assert_close(dw, dw_ref)


@pytest.mark.nojit
@pytest.mark.parametrize("version", FAST_CONV)
@given(st.integers(1, 4), st.integers(1, 2), windows(), st.booleans(), seeds)
def test_depthwise_conv_matches_loops(version, channels, multiplier, window, bias, seed):
    # groups == channels: every input channel has its own `multiplier` filters.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, window.h, window.w))
    w = rng.standard_normal((channels * multiplier, 1, window.kh, window.kw))
    b = rng.standard_normal(channels * multiplier) if bias else None
    opts = {**window.options, "groups": channels}
    out, _ = conv_pair(version)[0](x, w, b, **opts)
    np.testing.assert_allclose(out, reference.conv2d(x, w, b, **opts), rtol=1e-12, atol=1e-12)


@pytest.mark.nojit
@pytest.mark.parametrize("version", FAST_CONV)
@given(conv_cases(max_kernel=1, max_padding=2, max_stride=3))
def test_one_by_one_conv_matches_loops(version, case):
    """A 1x1 window without padding gathers single pixels: a reshape at stride 1, a strided copy
    otherwise; with padding, the general kernels. Every case against the loops and the
    reference pair."""
    a = case.arrays()
    out, _ = conv_pair(version)[0](a["x"], a["w"], a["b"], **case.options)
    expected = reference.conv2d(a["x"], a["w"], a["b"], **case.options)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert_conv_equals_the_reference(version, case)


def test_auto_convolves_narrow_groups_directly_and_the_rest_by_im2col():
    choose = fast_conv.choose_algorithm
    limit = fast_conv.DIRECT_MAX_GROUP_WIDTH
    assert choose("auto", 2, 9) == "direct"  # the SK unit's grouped 3x3 convolutions
    assert choose("auto", 3, 9) == "direct"  # a dense stem of 3 channels
    assert choose("auto", limit, 9) == "direct"
    assert choose("auto", limit + 1, 9) == "im2col"
    assert choose("auto", 2, 1) == "im2col"  # 1x1: a matrix product
    for algorithm in ("im2col", "direct"):
        assert choose(algorithm, limit + 1, 1) == algorithm
    with pytest.raises(
        ValueError, match=r"algorithm must be one of \('auto', 'im2col', 'direct'\)"
    ):
        fast.conv2d_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), algorithm="fft")


@pytest.mark.parametrize("version", FAST_CONV)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_add_to_adds_dx_in_place(version, stride, dilation):
    """backward(add_to=earlier) returns earlier + dx, in the array `earlier` itself (the SK
    unit's later branches add their dx into the first's), with the same weight gradient."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4, 7, 6))
    w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    options = dict(stride=stride, padding=dilation, dilation=dilation, groups=2)
    forward, backward = conv_pair(version)
    out, cache = forward(x, w, b, **options)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = backward(dout, cache)
    for earlier in (rng.standard_normal(x.shape), rng.standard_normal(x.shape[::-1]).T):
        expected = earlier + dx  # the second is not C-contiguous
        _, cache = forward(x, w, b, **options)
        summed, dw_too, db_too = backward(dout, cache, add_to=earlier)
        assert summed is earlier
        np.testing.assert_allclose(summed, expected, rtol=1e-12, atol=1e-12)
        assert_close(dw_too, dw, rtol=1e-12)
        assert_close(db_too, db, rtol=1e-12)
    # Without the input's gradient there is nothing to add: add_to is left as it was.
    earlier = rng.standard_normal(x.shape)
    kept = earlier.copy()
    none, dw_only, _ = backward(dout, cache, input_grad=False, add_to=earlier)
    assert none is None
    np.testing.assert_array_equal(earlier, kept)
    assert_close(dw_only, dw, rtol=1e-12)


@pytest.mark.parametrize("version", FAST_CONV)
@pytest.mark.parametrize(
    "add_to, message",
    [
        (np.zeros((3, 4, 7, 5)), "add_to must be an array of the input's shape"),
        (np.zeros((3, 4, 7, 6), np.float32), "dtype float64"),
        ([0.0], "add_to must be an array"),
    ],
)
def test_add_to_of_the_wrong_kind_is_refused(version, add_to, message):
    forward, backward = conv_pair(version)
    x = np.ones((3, 4, 7, 6))
    _, cache = forward(x, np.ones((4, 2, 3, 3)), padding=1, groups=2)
    with pytest.raises(ValueError, match=message):
        backward(np.ones((3, 4, 7, 6)), cache, add_to=add_to)
    frozen = np.zeros(x.shape)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        backward(np.ones((3, 4, 7, 6)), cache, add_to=frozen)


# --- batch norm --------------------------------------------------------------------------------

# (fast pair, reference pair, options): batch norm alone, and followed by a ReLU or not.
BN_PAIRS = {
    "batchnorm": (
        (fast.batchnorm_forward, fast.batchnorm_backward),
        (batchnorm.batchnorm_forward, batchnorm.batchnorm_backward),
        {},
    ),
    "batchnorm_relu": (
        (fast.batchnorm_relu_forward, fast.batchnorm_relu_backward),
        (layers.batchnorm_relu_forward, layers.batchnorm_relu_backward),
        {"relu": True},
    ),
    "batchnorm_relu(relu=False)": (
        (fast.batchnorm_relu_forward, fast.batchnorm_relu_backward),
        (layers.batchnorm_relu_forward, layers.batchnorm_relu_backward),
        {"relu": False},
    ),
}


def _bn_results(pair, options, a, dout, training, momentum=0.1, eps=1e-5):
    forward, backward = pair
    out, mean, var, cache = forward(**a, training=training, momentum=momentum, eps=eps, **options)
    dx, dgamma, dbeta = backward(dout, cache)
    return {"out": out, "mean": mean, "var": var, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


@pytest.mark.nojit
@pytest.mark.parametrize("name", BN_PAIRS)
@pytest.mark.parametrize("ndim", [2, 4])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@given(data=st.data())
def test_batchnorm_equals_the_reference(name, ndim, training, data):
    """Output, running statistics and every gradient, of (N, C) and (N, C, H, W) inputs."""
    case = data.draw(batchnorm_cases(training=training, ndim=ndim), label="case")
    momentum = data.draw(st.sampled_from([0.1, 0.25, 1.0]), label="momentum")
    eps = data.draw(st.sampled_from([1e-5, 1e-3]), label="eps")
    fast_pair, reference_pair, options = BN_PAIRS[name]
    a = case.arrays()
    dout = np.random.default_rng(case.seed + 1).standard_normal(case.shape)
    got = _bn_results(fast_pair, options, a, dout, training, momentum, eps)
    expected = _bn_results(reference_pair, options, a, dout, training, momentum, eps)
    for key, value in expected.items():
        assert_close(got[key], value, rtol=1e-9, atol=1e-11, name=key)


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
    out, _, _, cache = fast.batchnorm_relu_forward(x, gamma, beta, mean, var, training=False)
    assert (out == 0).any() and (out > 0).any()
    dx, _, _ = fast.batchnorm_relu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx != 0, out > 0)


def test_batchnorm_statistics_keep_their_precision_far_from_zero():
    """The fused statistics take the variance as E[x^2] - E[x]^2, summed in float64: a batch
    whose mean is 10^4 times its spread still gets its variance to 1e-6."""
    rng = np.random.default_rng(7)
    x = (1e4 + rng.standard_normal((16, 3, 5, 5))).astype(np.float64)
    c = x.shape[1]
    args = (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))
    _, _, var, _ = fast.batchnorm_forward(x, *args, momentum=1.0)
    _, _, var_ref, _ = batchnorm.batchnorm_forward(x, *args, momentum=1.0)
    np.testing.assert_allclose(var, var_ref, rtol=1e-6)


# --- ReLU --------------------------------------------------------------------------------------


def _with_specials(rng, shape, dtype):
    """Normal values with some exact zeros, NaN and infinities among them."""
    x = rng.standard_normal(shape)
    specials = rng.choice([0.0, np.nan, np.inf, -np.inf], shape)
    return np.where(rng.random(shape) < 0.2, specials, x).astype(dtype)


@pytest.mark.nojit
@given(any_shapes(), dtypes, seeds)
def test_relu_and_add_relu_equal_the_reference_exactly(shape, dtype, seed):
    """Element by element the same operations: equal to the bit, NaN giving 0 as np.where does."""
    rng = np.random.default_rng(seed)
    x, residual = _with_specials(rng, shape, dtype), _with_specials(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    with np.errstate(invalid="ignore"):  # inf + -inf in the residual sum
        for (got, got_cache), (expected, expected_cache) in [
            (fast.relu_forward(x), relu_forward(x)),
            (fast.add_relu_forward(x, residual), layers.add_relu_forward(x, residual)),
        ]:
            assert got.dtype == dtype and got.shape == shape
            assert np.array_equal(got, expected, equal_nan=True)
            dx = fast.relu_backward(dout, got_cache)
            assert dx.dtype == dtype
            assert np.array_equal(dx, relu_backward(dout, expected_cache), equal_nan=True)


# --- the SK unit -------------------------------------------------------------------------------

# Both M, both strides, both modes, in every combination.
SK_COMBINATIONS = [
    SKCase(3, 4, 5, 6, branches=m, groups=2, stride=s, r=2, L=3, training=t, seed=10 * m + s)
    for m in (2, 3)
    for s in (1, 2)
    for t in (True, False)
]


def _sk_results(ops, case: SKCase):
    x, params = case.arrays()
    out, cache = ops.sk_unit_forward(x, params, **case.options)
    dout = np.random.default_rng(case.seed + 1).standard_normal(out.shape)
    dx, grads = ops.sk_unit_backward(dout, cache)
    return out, cache, dx, grads


@pytest.mark.nojit
@given(sk_cases(min_n=2))
@example(SK_COMBINATIONS[0])
@example(SK_COMBINATIONS[1])
@example(SK_COMBINATIONS[2])
@example(SK_COMBINATIONS[3])
@example(SK_COMBINATIONS[4])
@example(SK_COMBINATIONS[5])
@example(SK_COMBINATIONS[6])
@example(SK_COMBINATIONS[7])
def test_sk_unit_equals_the_reference(case):
    """V, the attention a, the updated running statistics, dx and every parameter's gradient."""
    out, cache, dx, grads = _sk_results(FAST, case)
    out_ref, cache_ref, dx_ref, grads_ref = _sk_results(REFERENCE, case)
    assert_close(out, out_ref, rtol=1e-9, atol=1e-11, name="V")
    assert cache.a.shape == (case.n, case.branches, case.channels)
    assert_close(cache.a, cache_ref.a, rtol=1e-9, atol=1e-11, name="a")
    assert cache.running_stats.keys() == cache_ref.running_stats.keys()
    for key, value in cache_ref.running_stats.items():
        assert_close(cache.running_stats[key], value, rtol=1e-9, atol=1e-11, name=key)
    assert_close(dx, dx_ref, rtol=1e-8, atol=1e-10, name="dx")
    assert grads.keys() == grads_ref.keys()
    for key, value in grads_ref.items():
        assert_close(grads[key], value, rtol=1e-8, atol=1e-10, name=key)


@pytest.mark.nojit
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), dtypes, seeds)
def test_select_kernels_equal_the_numpy_expressions(n, m, c, hw, dtype, seed):
    """The SK unit's weighted sum of branches and its two backward halves, as skscratch.sk writes
    them inline: V = sum_m a_m U_m; da_m = sum over pixels of dV * U_m; dU_m = a_m dV + g."""
    rng = np.random.default_rng(seed)
    branches = tuple(rng.standard_normal((n, c, hw, hw + 1)).astype(dtype) for _ in range(m))
    a = rng.dirichlet(np.ones(m), size=(n, c)).transpose(0, 2, 1).astype(dtype)  # (N, M, C)
    dv = rng.standard_normal(branches[0].shape).astype(dtype)
    g = rng.standard_normal((n, c)).astype(dtype)  # the gradient all branches share
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)

    # The kernels write into arrays they are given, every element of them.
    v = np.full_like(branches[0], np.nan)
    fast_sk._weighted_sum(branches, a, v)
    assert_close(v, sum(a[:, k, :, None, None] * u for k, u in enumerate(branches)), **tol)
    da = np.stack([(dv * u).sum(axis=(2, 3)) for u in branches], axis=1)
    assert_close(fast_sk._weighted_sum_backward_weights(dv, branches), da, **tol)
    du = np.full((m, *dv.shape), np.nan, dtype)
    fast_sk._weighted_sum_backward_branches(dv, a, g, du)
    expected = np.stack([a[:, k, :, None, None] * dv + g[:, :, None, None] for k in range(m)])
    assert_close(du, expected, **tol)


# --- float32 -----------------------------------------------------------------------------------


def _float32_runs():
    """name -> run(dtype): every fast pair on fixed float values, its outputs and gradients."""
    rng = np.random.default_rng(20)
    x = rng.standard_normal((4, 6, 7, 6))
    w3, w1 = rng.standard_normal((6, 2, 3, 3)) / 4, rng.standard_normal((8, 6, 1, 1)) / 4
    bn = {"gamma": rng.uniform(0.5, 2, 6), "beta": rng.standard_normal(6)}
    stats = {"running_mean": rng.standard_normal(6), "running_var": rng.uniform(0.5, 2, 6)}
    sk_x, sk_params = SK_COMBINATIONS[2].arrays()

    def conv(algorithm, w, **options):
        def run(dt):
            out, cache = fast.conv2d_forward(
                x.astype(dt), w.astype(dt), **options, algorithm=algorithm
            )
            return (out, *fast.conv2d_backward(_dout(out), cache)[:2])

        return run

    def bn_relu(relu, training):
        def run(dt):
            a = {k: v.astype(dt) for k, v in (bn | stats).items()}
            out, m, v, cache = fast.batchnorm_relu_forward(
                x.astype(dt), **a, training=training, relu=relu
            )
            return (out, m, v, *fast.batchnorm_relu_backward(_dout(out), cache))

        return run

    def relu(dt):
        out, cache = fast.add_relu_forward(x.astype(dt), x[::-1].astype(dt))
        out2, cache2 = fast.relu_forward(x.astype(dt))
        return out, out2, fast.relu_backward(_dout(out), cache)

    def gathers(dt):
        cols = fast_im2col.im2col(x.astype(dt), 3, 3, padding=1, stride=2)
        return cols, fast_im2col.col2im(cols, x.shape, 3, 3, padding=1, stride=2)

    def sk_unit(dt):
        params = {k: v.astype(dt) for k, v in sk_params.items()}
        out, cache = fast.sk_unit_forward(sk_x.astype(dt), params, **SK_COMBINATIONS[2].options)
        dx, grads = fast.sk_unit_backward(_dout(out), cache)
        return out, cache.a, *cache.running_stats.values(), dx, *grads.values()

    return {
        "conv direct 3x3 stride 2": conv("direct", w3, stride=2, padding=1, groups=3),
        "conv direct 3x3 dilated": conv("direct", w3, padding=2, dilation=2, groups=3),
        "conv im2col 3x3": conv("im2col", w3, padding=1, groups=3),
        "conv 1x1 strided": conv("auto", w1, stride=2),
        "batchnorm_relu training": bn_relu(True, True),
        "batchnorm eval": bn_relu(False, False),
        "relu, add_relu": relu,
        "im2col, col2im": gathers,
        "sk_unit": sk_unit,
    }


def _dout(out):
    return np.random.default_rng(21).standard_normal(out.shape).astype(out.dtype)


FLOAT32_RUNS = _float32_runs()


@pytest.mark.parametrize("name", FLOAT32_RUNS)
def test_float32_in_float32_out(name):
    """Every output and gradient of a float32 call is float32, and is the float64 result to
    float32 precision (batch norm sums in float64 either way)."""
    run = FLOAT32_RUNS[name]
    results32, results64 = run(np.float32), run(np.float64)
    assert len(results32) == len(results64)
    for k, (r32, r64) in enumerate(zip(results32, results64, strict=True)):
        assert r32.dtype == np.float32, (name, k)
        scale = np.abs(r64).max()
        np.testing.assert_allclose(r32, r64, rtol=2e-4, atol=2e-5 * scale, err_msg=f"{name} {k}")


# --- threads -----------------------------------------------------------------------------------


def _parallel_runs():
    """name -> run(ops): fast pairs on arrays large enough that every thread gets work (many
    (image, channel) planes, several chunks of images, several chunks of a flat array) and that
    their outputs come from the fast backend's pool of reused memory; their results."""
    rng = np.random.default_rng(30)
    x = rng.standard_normal((32, 16, 16, 16))  # 1 MiB
    w = rng.standard_normal((16, 4, 3, 3))
    dout2 = rng.standard_normal((32, 16, 8, 8))
    dout1 = rng.standard_normal(x.shape)
    c = x.shape[1]
    bn_args = (rng.uniform(0.5, 2, c), rng.standard_normal(c), np.zeros(c), np.ones(c))
    flat = rng.standard_normal(3 * 2**16 + 7)  # three chunks of the ReLU kernels and a bit
    sk_case = SKCase(16, 8, 9, 8, branches=3, groups=2, stride=2, r=1, L=2, training=True, seed=31)
    sk_x, sk_params = sk_case.arrays()

    def conv(version, **options):
        def run(ops):
            forward, backward = conv_pair(version if ops is FAST else "reference")
            out, cache = forward(x, w, **options, groups=4)
            return (out, *backward(dout2 if out.shape == dout2.shape else dout1, cache)[:2])

        return run

    def cols(ops):
        module = fast_im2col if ops is FAST else reference_im2col
        gather, scatter = module.im2col, module.col2im
        dense = gather(x, 3, 3, padding=2, dilation=2)  # overlapping taps add in col2im
        return dense, scatter(dense, x.shape, 3, 3, padding=2, dilation=2)

    def bn_relu(ops):
        out, m, v, cache = ops.batchnorm_relu_forward(x, *bn_args)
        return (out, m, v, *ops.batchnorm_relu_backward(dout1, cache))

    def relus(ops):
        out, cache = ops.add_relu_forward(flat, flat[::-1])
        return out, ops.relu_forward(flat)[0], ops.relu_backward(flat[::-1], cache)

    def sk_unit(ops):
        out, cache = ops.sk_unit_forward(sk_x, sk_params, **sk_case.options)
        dx, grads = ops.sk_unit_backward(np.ones_like(out), cache)
        return out, dx, *(grads[k] for k in sorted(grads))

    return {
        "conv direct stride 2": conv("fast-direct", stride=2, padding=1),
        "conv direct stride 1": conv("fast-direct", padding=1),
        "conv im2col": conv("fast-im2col", padding=1),
        "im2col, col2im": cols,
        "batchnorm_relu": bn_relu,
        "relu, add_relu": relus,
        "sk_unit": sk_unit,
    }


PARALLEL_RUNS = _parallel_runs()


@pytest.mark.skipif(JIT_DISABLED, reason="without the JIT nothing runs in parallel")
@pytest.mark.parametrize("name", PARALLEL_RUNS)
def test_results_do_not_depend_on_the_number_of_threads(name):
    """Parallel loops run over independent outputs only (no two threads add into one element),
    and sums are split the same way whatever the threads: one thread and all of them give the
    same bits, run after run, and the reference's values. Every result is kept alive meanwhile:
    none of them may be memory that a later call writes into."""
    run = PARALLEL_RUNS[name]
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        alone = run(FAST)
    finally:
        numba.set_num_threads(threads)
    shared = [run(FAST) for _ in range(3)]
    for results in shared:
        for k, (a, b) in enumerate(zip(alone, results, strict=True)):
            assert np.array_equal(a, b), f"{name}: result {k} changes with the threads"
    for k, (a, b) in enumerate(zip(alone, run(REFERENCE), strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{name}: result {k}")


# --- the kernels as plain Python ---------------------------------------------------------------


def _compiled_functions() -> dict[str, list[str]]:
    """module of skscratch.fast -> the names of the compiled functions defined in it."""
    import importlib
    import pkgutil

    from numba.core.dispatcher import Dispatcher

    compiled = {}
    for info in pkgutil.iter_modules(fast.__path__):
        module = importlib.import_module(f"skscratch.fast.{info.name}")
        compiled[info.name] = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__
        )
    return compiled


# A few kernels of each kind, named so that the check below cannot pass on an empty package.
CORE_KERNELS = [
    (fast_im2col, "_im2col"),
    (fast_im2col, "_col2im"),
    (direct_forward, "_conv3x3_direct_forward"),
    (direct_backward, "_conv_direct_backward_weight"),
    (fast_batchnorm, "_bn_stats"),
    (fast_activations, "_relu_forward"),
    (fast_sk, "_weighted_sum"),
]


@pytest.mark.nojit
def test_kernels_are_plain_python_exactly_when_jit_is_disabled():
    compiled = _compiled_functions()
    for module, name in CORE_KERNELS:
        assert inspect.isfunction(getattr(module, name)) == JIT_DISABLED, name
    if JIT_DISABLED:
        assert not any(compiled.values()), compiled
    else:
        # Compiled functions carry a leading underscore; the public functions are plain Python.
        assert all(name.startswith("_") for names in compiled.values() for name in names)


def test_kernels_pass_as_plain_python_with_jit_disabled():
    """Run the `nojit` tests again in a subprocess with NUMBA_DISABLE_JIT=1."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).resolve()),
            "-m",
            "nojit",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-profile=nojit",
        ],
        cwd=root,
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # Every selected test ran and passed: none failed, none was skipped.
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), report
    assert not re.search(r"failed|error|skipped|xfail|xpass", summary), report


def test_compilations_count_what_compiles_and_not_what_the_cache_loads(tmp_path):
    """A kernel compiled in a process with an empty cache counts; the same kernel in a second
    process, loaded from that cache, does not."""
    script = (
        "import numpy as np; from skscratch import fast; "
        "fast.relu_forward(np.ones(4, np.float32)); print(fast.compilations())"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    counts = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        ).stdout.strip()
        for _ in range(2)
    ]
    assert counts == ["1", "0"]
