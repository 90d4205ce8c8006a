"""Compiled kernels: the only module that imports numba.

Each kernel here has a plain-NumPy reference in the teaching modules (for example
`im2col.im2col_reference`), and the tests check that the two agree. With the environment variable
NUMBA_DISABLE_JIT=1 these functions run as ordinary (slow) Python, which is how the tests show the
loops themselves are right.

Parallel loops (`prange`) only run over independent outputs: every iteration writes its own
(image, channel) plane, so no two threads ever add into the same element.
"""

from __future__ import annotations

import os

# numba's parallel loops run on OpenMP threads, which by default spin for a while after every
# loop, waiting for the next. Between two loops this process runs BLAS products on OpenBLAS's
# own threads, and on a small or busy machine the spinning threads take the cores they need: a
# 30 microsecond kernel was measured taking 16 ms. Passive waiting hands the core back. This must
# be set before the OpenMP runtime loads (at the first parallel call); a user's choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402


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


# -- direct grouped convolution, stride 1 --------------------------------------------------------
#
# For stride 1, treat each zero-padded input plane (HP x WP) as one flat row. The output pixel
# (oy, ox), computed on the padded width, sits at k = oy * WP + ox, and its tap (i, j) reads the
# flat input at k + i*dh*WP + j*dw. So every tap is one long contiguous multiply-add over the
# whole plane, which LLVM turns into SIMD FMAs. The WP - WO extra columns per row are computed
# and then dropped; the flat buffers carry (KW - 1) * dw zeros at the end so that the last
# rows' extra columns read zeros rather than past the end.


@njit(cache=True, parallel=True)
def _pad_flat(x, ph, pw, extra):
    """(N, C, H, W) -> (N, C, (H + 2ph) * (W + 2pw) + extra): zero-padded planes, flattened."""
    n_img, n_ch, h, w = x.shape
    wp = w + 2 * pw
    size = (h + 2 * ph) * wp
    out = np.zeros((n_img, n_ch, size + extra), dtype=x.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for y in range(h):
            row = out[n, c, (y + ph) * wp + pw : (y + ph) * wp + pw + w]
            src = x[n, c, y]
            for k in range(w):
                row[k] = src[k]
    return out


@njit(cache=True, parallel=True)
def _spread_rows(dout, wp, extra):
    """(N, C, HO, WO) -> (N, C, HO * WP + extra): rows laid out at the padded width, the extra
    columns zero, so that the backward taps can run over whole flat planes too."""
    n_img, n_ch, ho, wo = dout.shape
    out = np.zeros((n_img, n_ch, ho * wp + extra), dtype=dout.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for y in range(ho):
            row = out[n, c, y * wp : y * wp + wo]
            src = dout[n, c, y]
            for k in range(wo):
                row[k] = src[k]
    return out


@njit(cache=True, parallel=True)
def _conv_direct_forward(xpad, w, groups, ho, wo, wp, dh, dw):
    """out[n, co] = sum over the group's ci and taps of w[co, ci, i, j] * shifted xpad[n, ci]."""
    n_img = xpad.shape[0]
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    length = ho * wp
    out = np.empty((n_img, c_out, ho, wo), dtype=xpad.dtype)
    for ng in prange(n_img * groups):
        n = ng // groups
        g = ng % groups
        acc = np.empty(length, dtype=xpad.dtype)
        for co in range(g * c_out_g, (g + 1) * c_out_g):
            acc[:] = 0
            for ci in range(c_in_g):
                plane = xpad[n, g * c_in_g + ci]
                for i in range(kh):
                    for j in range(kw):
                        wv = w[co, ci, i, j]
                        off = i * dh * wp + j * dw
                        xs = plane[off : off + length]
                        for k in range(length):
                            acc[k] += wv * xs[k]
            for y in range(ho):
                out[n, co, y] = acc[y * wp : y * wp + wo]
    return out


@njit(cache=True, parallel=True)
def _conv_direct_backward_data(dspread, w, groups, h, wd, ph, pw, hp, wp, dh, dw):
    """dx[n, ci] = sum over the group's co and taps of w[co, ci, i, j] * dout[n, co] shifted back:
    the transpose of the forward, scattering into a padded plane that is cropped at the end."""
    n_img = dspread.shape[0]
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    length = dspread.shape[2] - (kw - 1) * dw  # HO * WP
    n_ch = c_in_g * groups
    dx = np.empty((n_img, n_ch, h, wd), dtype=dspread.dtype)
    for ng in prange(n_img * groups):
        n = ng // groups
        g = ng % groups
        acc = np.empty(hp * wp + (kw - 1) * dw, dtype=dspread.dtype)
        for ci in range(c_in_g):
            acc[:] = 0
            for co in range(g * c_out_g, (g + 1) * c_out_g):
                ds = dspread[n, co, :length]
                for i in range(kh):
                    for j in range(kw):
                        wv = w[co, ci, i, j]
                        off = i * dh * wp + j * dw
                        target = acc[off : off + length]
                        for k in range(length):
                            target[k] += wv * ds[k]
            for y in range(h):
                dx[n, g * c_in_g + ci, y] = acc[(y + ph) * wp + pw : (y + ph) * wp + pw + wd]
    return dx


@njit(cache=True, parallel=True, fastmath=True)
def _conv_direct_backward_weight(xpad, dspread, groups, kh, kw, wp, dh, dw):
    """dw[co, ci, i, j] = sum over images and output pixels of dout[n, co] * shifted xpad[n, ci].
    Parallel over output channels: each owns its slice of dw, the sum over n stays in-thread.
    fastmath lets LLVM reorder the dot product's sum into SIMD lanes (rounding differs a little)."""
    n_img, n_ch = xpad.shape[0], xpad.shape[1]
    c_out = dspread.shape[1]
    c_in_g = n_ch // groups
    c_out_g = c_out // groups
    length = dspread.shape[2] - (kw - 1) * dw
    dwt = np.zeros((c_out, c_in_g, kh, kw), dtype=xpad.dtype)
    for co in prange(c_out):
        g = co // c_out_g
        for n in range(n_img):
            ds = dspread[n, co, :length]
            for ci in range(c_in_g):
                plane = xpad[n, g * c_in_g + ci]
                for i in range(kh):
                    for j in range(kw):
                        off = i * dh * wp + j * dw
                        xs = plane[off : off + length]
                        s = dspread.dtype.type(0)
                        for k in range(length):
                            s += ds[k] * xs[k]
                        dwt[co, ci, i, j] += s
    return dwt


# -- batch norm (+ ReLU), fused, for (N, C, H, W) ------------------------------------------------
#
# Parallel over channels: a channel's statistics and outputs depend only on that channel. The
# sums are accumulated in float64, so float32 batches of 10^5 values per channel keep their
# precision. The reference is skscratch.batchnorm (followed by skscratch.activations.relu).


@njit(cache=True, parallel=True)
def _bn_stats(x):
    """Per-channel mean and biased variance of x (N, C, H, W), in float64, in one pass:
    var = E[x^2] - E[x]^2, which float64 keeps exact enough for activations of any sensible
    scale (it would lose digits only where the mean is 10^8 times the spread)."""
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    mean = np.empty(n_ch, dtype=np.float64)
    var = np.empty(n_ch, dtype=np.float64)
    for c in prange(n_ch):
        s = 0.0
        q = 0.0
        for n in range(n_img):
            plane = x[n, c].ravel()
            for k in range(plane.size):
                v = np.float64(plane[k])
                s += v
                q += v * v
        mu = s / m
        mean[c] = mu
        var[c] = max(q / m - mu * mu, 0.0)
    return mean, var


@njit(cache=True, parallel=True)
def _bn_relu_forward(x, scale, shift, relu):
    """out = scale[c] * x + shift[c], then max(., 0) if relu; scale, shift (C,) in x's dtype."""
    n_img, n_ch = x.shape[0], x.shape[1]
    out = np.empty_like(x)
    zero = x.dtype.type(0)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        src = x[n, c].ravel()
        dst = out[n, c].ravel()
        a, b = scale[c], shift[c]
        for k in range(src.size):
            v = a * src[k] + b
            dst[k] = max(v, zero) if relu else v
    return out


@njit(cache=True, parallel=True, fastmath=True)
def _bn_relu_backward(dout, x, out, mean, inv_std, gamma, relu, training):
    """Batch-norm (+ ReLU) backward from the saved input x and output out.

    g = dout masked where out <= 0 (if relu); xhat = (x - mean) * inv_std; then per channel
    dbeta = sum g, dgamma = sum g * xhat, and
    dx = gamma * inv_std * (g - dbeta / m - xhat * dgamma / m)   (training; without the two
    mean terms in evaluation mode). Returns dx, dgamma, dbeta.
    """
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    dx = np.empty_like(x)
    dgamma = np.empty(n_ch, dtype=x.dtype)
    dbeta = np.empty(n_ch, dtype=x.dtype)
    zero = x.dtype.type(0)
    for c in prange(n_ch):
        mu, istd = x.dtype.type(mean[c]), inv_std[c]
        sg = 0.0
        sgx = 0.0
        for n in range(n_img):
            d = dout[n, c].ravel()
            xs = x[n, c].ravel()
            o = out[n, c].ravel()
            for k in range(d.size):
                g = d[k] if (not relu or o[k] > zero) else zero
                sg += g
                sgx += g * (xs[k] - mu)
        sgx *= istd  # sum of g * xhat
        dbeta[c] = sg
        dgamma[c] = sgx
        coef = gamma[c] * istd
        mean_g = x.dtype.type(sg / m if training else 0.0)
        mean_gx = x.dtype.type(sgx / m if training else 0.0)
        for n in range(n_img):
            d = dout[n, c].ravel()
            xs = x[n, c].ravel()
            o = out[n, c].ravel()
            dst = dx[n, c].ravel()
            for k in range(d.size):
                g = d[k] if (not relu or o[k] > zero) else zero
                xhat = (xs[k] - mu) * istd
                dst[k] = coef * (g - mean_g - xhat * mean_gx)
    return dx, dgamma, dbeta
