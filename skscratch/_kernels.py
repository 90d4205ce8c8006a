"""Compiled kernels: the only module that imports numba.

Each kernel here has a plain-NumPy reference in the teaching modules (for example
`im2col.im2col_reference`), and the tests check that the two agree. With the environment variable
NUMBA_DISABLE_JIT=1 these functions run as ordinary (slow) Python, which is how the tests show the
loops themselves are right.

Parallel loops (`prange`) only run over independent outputs: every iteration writes its own
(image, channel) plane, so no two threads ever add into the same element.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _valid_range(offset: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Output indices o in [lo, hi) whose input index o * stride + offset lies in [0, size)."""
    lo = max(0, -(offset // stride))
    hi = min(n_out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, parallel=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """(N, C, H, W) -> (N, C*KH*KW, HO*WO); rows ordered (c, i, j); padding reads as zero."""
    n_img, n_ch, h, w = x.shape
    cols = np.zeros((n_img, n_ch * kh * kw, ho * wo), dtype=x.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                row = (c * kh + i) * kw + j
                for oy in range(oy_lo, oy_hi):
                    iy = oy * sh + i * dh - ph
                    for ox in range(ox_lo, ox_hi):
                        cols[n, row, oy * wo + ox] = x[n, c, iy, ox * sw + j * dw - pw]
    return cols


@njit(cache=True, parallel=True)
def _col2im(cols, n_ch, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """The adjoint of `_im2col`: (N, C*KH*KW, HO*WO) -> (N, C, H, W), overlapping taps add."""
    n_img = cols.shape[0]
    dx = np.zeros((n_img, n_ch, h, w), dtype=cols.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                row = (c * kh + i) * kw + j
                for oy in range(oy_lo, oy_hi):
                    iy = oy * sh + i * dh - ph
                    for ox in range(ox_lo, ox_hi):
                        dx[n, c, iy, ox * sw + j * dw - pw] += cols[n, row, oy * wo + ox]
    return dx
