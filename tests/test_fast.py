"""The compiled im2col/col2im kernels against their plain-NumPy references and plain loops.

The tests marked `nojit` run a second time in a subprocess with NUMBA_DISABLE_JIT=1, where the
kernels are ordinary Python functions: that shows the loops themselves are right, not just the
compiled code.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference
from conftest import Window, conv_cases, seeds, windows
from hypothesis import example, given
from hypothesis import strategies as st

from skscratch import (
    _kernels,
    col2im,
    col2im_reference,
    conv2d_backward,
    conv2d_forward,
    im2col,
    im2col_reference,
)
from skscratch import conv as conv_module
from skscratch.gradcheck import check_gradients
from skscratch.sk import select_backward_reference, select_reference

# Wider than the convolution tests: dilations and strides up to 3 that rarely divide the input
# evenly, and padding up to 4, larger than any kernel (whole windows then read only padding).
kernel_windows = windows(max_kernel=4, max_stride=3, max_dilation=3, max_padding=4)
dtypes = st.sampled_from([np.float32, np.float64])

# Cases worth running every time, not only when hypothesis happens to find them.
PADDING_LARGER_THAN_KERNEL = Window(
    kh=2, kw=1, stride=(1, 2), padding=(4, 3), dilation=(1, 1), h=1, w=2
)
ONE_BY_ONE = Window(kh=1, kw=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1), h=3, w=2)
# A strided 1x1 window without padding (a shortcut's downsampling) takes a strided copy.
ONE_BY_ONE_STRIDED = Window(kh=1, kw=1, stride=(2, 3), padding=(0, 0), dilation=(1, 2), h=5, w=7)
UNEVEN_STRIDE_AND_DILATION = Window(
    kh=3, kw=2, stride=(3, 2), padding=(1, 0), dilation=(2, 3), h=8, w=7
)


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), dtypes, seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, np.float64, 0)
@example(ONE_BY_ONE, 2, 3, np.float32, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, np.float32, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, np.float64, 0)
def test_im2col_kernel_equals_reference_exactly(window, n, c, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, window.h, window.w)).astype(dtype)
    args = (x, window.kh, window.kw)
    cols = im2col(*args, **window.options)
    ho, wo = window.out_hw
    assert cols.shape == (n, c * window.kh * window.kw, ho * wo)
    assert cols.dtype == dtype
    # A gather only copies values: any difference at all is a wrong index.
    assert np.array_equal(cols, im2col_reference(*args, **window.options))
    assert np.array_equal(cols, reference.im2col(*args, **window.options))


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, 0)
@example(ONE_BY_ONE, 2, 3, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, 0)
def test_col2im_kernel_matches_reference(window, n, c, seed):
    ho, wo = window.out_hw
    rows = c * window.kh * window.kw
    cols = np.random.default_rng(seed).standard_normal((n, rows, ho * wo))
    x_shape = (n, c, window.h, window.w)
    args = (cols, x_shape, window.kh, window.kw)
    dx = col2im(*args, **window.options)
    assert dx.shape == x_shape
    # Overlapping taps are added in another order than in the references: equal to rounding.
    np.testing.assert_allclose(
        dx, col2im_reference(*args, **window.options), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        dx, reference.col2im(*args, **window.options), rtol=1e-12, atol=1e-12
    )


@pytest.mark.nojit
@given(kernel_windows, st.integers(1, 2), st.integers(1, 3), seeds)
@example(PADDING_LARGER_THAN_KERNEL, 1, 2, 0)
@example(ONE_BY_ONE_STRIDED, 2, 3, 0)
@example(UNEVEN_STRIDE_AND_DILATION, 1, 2, 0)
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


@pytest.mark.nojit
@given(st.integers(1, 4), st.integers(1, 2), windows(), st.booleans(), seeds)
def test_depthwise_conv_matches_loops(channels, multiplier, window, bias, seed):
    # groups == channels: every input channel has its own `multiplier` filters.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, window.h, window.w))
    w = rng.standard_normal((channels * multiplier, 1, window.kh, window.kw))
    b = rng.standard_normal(channels * multiplier) if bias else None
    opts = {**window.options, "groups": channels}
    out, _ = conv2d_forward(x, w, b, **opts)
    np.testing.assert_allclose(out, reference.conv2d(x, w, b, **opts), rtol=1e-12, atol=1e-12)


@pytest.mark.nojit
@given(
    kernel_windows,
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 7),
    st.integers(1, 3),
    seeds,
)
# Stride 2 splits each row into even and odd columns in one pass: odd and even widths, with
# padding of either parity, and a plane a single column wide.
@example(Window(3, 3, (2, 2), (1, 1), (1, 1), h=7, w=9), 2, 2, 3, 2, 0)
@example(Window(3, 3, (2, 2), (2, 2), (2, 2), h=6, w=8), 2, 2, 3, 2, 0)
@example(Window(3, 2, (2, 2), (1, 1), (1, 1), h=5, w=1), 1, 1, 2, 1, 0)
def test_direct_conv_over_blocks_of_images_matches_loops(window, groups, per_group, n, block, seed):
    """The direct kernels run over blocks of images laid end to end; with blocks of 1-3 images,
    batches of up to 7 end in a partial block, and a wrong offset would mix images up."""
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x = rng.standard_normal((n, c, window.h, window.w))
    w = rng.standard_normal((c, per_group, window.kh, window.kw))
    opts = {**window.options, "groups": groups}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_module, "_BLOCK_VALUES", 1)  # every plane fills a block ...
        out, cache = conv2d_forward(x, w, **opts, method="direct")
        assert conv_module._phase_geometry(cache).block == 1
        patch.setattr(conv_module, "_BLOCK_VALUES", block * conv_module._phase_geometry(cache).size)
        out, cache = conv2d_forward(x, w, **opts, method="direct")  # ... or `block` planes do
        assert conv_module._phase_geometry(cache).block == block
        dout = rng.standard_normal(out.shape)
        dx, dw, _ = conv2d_backward(dout, cache)
    np.testing.assert_allclose(out, reference.conv2d(x, w, None, **opts), rtol=1e-10, atol=1e-10)
    _, ref_cache = conv2d_forward(x, w, **opts, method="reference")
    dx_ref, dw_ref, _ = conv2d_backward(dout, ref_cache)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)


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
    assert set(errors) == {"x", "w", "b"}
    assert max(errors.values()) < 1e-6, errors


@given(conv_cases(max_kernel=1, max_padding=0, max_stride=1))
def test_one_by_one_conv_is_a_matrix_product_over_channels(case):
    # A 1x1 kernel with stride 1 and no padding mixes channels pixel by pixel (dilation does
    # nothing with a single tap).
    a = case.arrays()
    x, w, b = a["x"], a["w"], a["b"]
    out, cache = conv2d_forward(x, w, b, **case.options)
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
    assert max(errors.values()) < 1e-6, errors


@given(conv_cases(max_kernel=1, max_padding=2, max_stride=3))
def test_one_by_one_conv_with_stride_and_padding_matches_loops(case):
    a = case.arrays()
    out, _ = conv2d_forward(a["x"], a["w"], a["b"], **case.options)
    expected = reference.conv2d(a["x"], a["w"], a["b"], **case.options)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.nojit
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), dtypes, seeds)
def test_select_kernels_equal_the_numpy_reference(n, m, c, hw, dtype, seed):
    """The SK unit's weighted sum of branches and its two backward halves."""
    rng = np.random.default_rng(seed)
    branches = tuple(rng.standard_normal((n, c, hw, hw + 1)).astype(dtype) for _ in range(m))
    a = rng.dirichlet(np.ones(m), size=(n, c)).transpose(0, 2, 1).astype(dtype)  # (N, M, C)
    dv = rng.standard_normal(branches[0].shape).astype(dtype)
    g = rng.standard_normal((n, c)).astype(dtype)  # the gradient all branches share
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)

    v = _kernels._weighted_sum(branches, a)
    assert v.dtype == dtype
    np.testing.assert_allclose(v, select_reference(list(branches), a), **tol)
    da_ref, du_ref = select_backward_reference(dv, list(branches), a, g)
    np.testing.assert_allclose(_kernels._weighted_sum_backward_weights(dv, branches), da_ref, **tol)
    du = _kernels._weighted_sum_backward_branches(dv, a, g)
    assert du.dtype == dtype
    np.testing.assert_allclose(du, du_ref, **tol)


@pytest.mark.nojit
def test_kernels_are_plain_python_exactly_when_jit_is_disabled():
    jit_disabled = os.environ.get("NUMBA_DISABLE_JIT") == "1"
    for kernel in (_kernels._im2col, _kernels._col2im):
        assert inspect.isfunction(kernel) == jit_disabled


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
        timeout=300,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    n_marked = sum(
        1 for f in globals().values() if "nojit" in [m.name for m in getattr(f, "pytestmark", [])]
    )
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == n_marked, report


def test_compilations_count_what_compiles_and_not_what_the_cache_loads(tmp_path):
    """A kernel compiled in a process with an empty cache counts; the same kernel in a second
    process, loaded from that cache, does not."""
    script = (
        "import numpy as np; from skscratch import _kernels; "
        "_kernels._relu_forward(np.ones(4, np.float32)); print(_kernels.compilations())"
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
