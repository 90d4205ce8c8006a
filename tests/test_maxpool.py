"""Max pooling, the ImageNet stem's: the pair against loops, finite differences and its edges."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from conftest import seeds
from hypothesis import given
from hypothesis import strategies as st

from skscratch.gradcheck import check_gradients
from skscratch.pooling import max_pool2d_backward, max_pool2d_forward


@st.composite
def pool_cases(draw):
    """(shape, kernel, stride, padding) with padding <= kernel // 2 and an output of at least 1."""
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, k // 2))
    h, w = (draw(st.integers(max(1, k - 2 * padding), 9)) for _ in range(2))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return shape, k, stride, padding


@given(pool_cases(), seeds)
def test_forward_matches_loops(case, seed):
    shape, k, stride, padding = case
    x = np.random.default_rng(seed).standard_normal(shape)
    out, cache = max_pool2d_forward(x, k, stride=stride, padding=padding)
    expected, _ = reference.max_pool2d(x, k, stride, padding)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == x.dtype and cache.taken.shape == out.shape


@given(pool_cases(), seeds)
def test_gradients_match_finite_differences(case, seed):
    # Continuous random values: no two in a window are equal, so the maximum is differentiable.
    shape, k, stride, padding = case
    x = np.random.default_rng(seed).standard_normal(shape)
    errors = check_gradients(
        max_pool2d_forward,
        max_pool2d_backward,
        {"x": x},
        fixed={"kernel_size": k, "stride": stride, "padding": padding},
        seed=seed + 1,
    )
    assert errors["x"] < 1e-7, errors


@given(pool_cases(), seeds)
def test_backward_sends_each_windows_gradient_to_its_maximum(case, seed):
    shape, k, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out, cache = max_pool2d_forward(x, k, stride=stride, padding=padding)
    dout = rng.standard_normal(out.shape)
    _, at = reference.max_pool2d(x, k, stride, padding)
    expected = np.zeros(shape)
    for n, c, i, j in np.ndindex(out.shape):
        expected[n, c, at[n, c, i, j, 0], at[n, c, i, j, 1]] += dout[n, c, i, j]
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), expected, rtol=1e-12, atol=0)


def test_ties_go_to_the_first_in_the_window_and_padding_is_never_the_maximum():
    x = -np.ones((1, 1, 4, 4))  # all equal, all below the zero a zero-padding would add
    out, cache = max_pool2d_forward(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(out, -np.ones((1, 1, 2, 2)))
    dx = max_pool2d_backward(np.ones_like(out), cache)
    # The first pixel of each window, row by row, takes its window's gradient.
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[1, 1] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_the_imagenet_stem_pool_halves_112_to_56_in_float32():
    x = np.random.default_rng(0).standard_normal((2, 4, 112, 112)).astype(np.float32)
    out, cache = max_pool2d_forward(x)  # the defaults: 3x3, stride 2, padding 1
    assert out.shape == (2, 4, 56, 56) and out.dtype == np.float32
    assert max_pool2d_backward(np.ones_like(out), cache).dtype == np.float32


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: max_pool2d_forward(x, 3, padding=2), ValueError, "padding must be from 0 to"),
        (lambda x: max_pool2d_forward(x, 0), ValueError, "kernel_size must be at least 1"),
        (lambda x: max_pool2d_forward(x, 3, stride=1.5), TypeError, "stride must be an int"),
        (lambda x: max_pool2d_forward(x[0]), ValueError, "x must have 4 dim"),
        (lambda x: max_pool2d_forward(x, 9), ValueError, "larger than the padded input"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call(np.zeros((1, 2, 5, 5)))


def test_backward_checks_dout():
    _, cache = max_pool2d_forward(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 2, 3, 3\)"):
        max_pool2d_backward(np.zeros((1, 2, 2, 2)), cache)
    with pytest.raises(TypeError, match="dtype float32 but the forward input had float64"):
        max_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), cache)
