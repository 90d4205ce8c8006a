"""Direct grouped convolution, backward: the gradient of the input and of the weights.

The layout (padded planes split into stride phases, blocks of images as one flat row) is
described in `skscratch.fast.phases`; dout comes spread to that layout (`_spread_rows`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from skscratch.fast._rows import _put
from skscratch.fast.phases import _add_nine_taps, _nine_taps, _nine_weights, _unpad_phases


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv_direct_backward_data(
    dx, add, dspread, w, groups, ph, pw, sh, sw, wq, size, block, phase, offset, lead
):
    """dx[n, ci] = sum over the group's co and taps of w[co, ci, i, j] * dout[n, co] shifted back:
    the transpose of the forward, scattering into the padded phases, which are then read back
    into the unpadded planes of dx (N, C_in, H, W), written, or added to if `add`."""
    n_img = (dspread.shape[1] - lead) // size
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    ho_wq = size - offset.max()  # at least the flat length of one image's outputs
    for bg in prange(n_blocks * groups):
        n0 = bg // groups * block
        g = bg % groups
        nb = min(block, n_img - n0)
        length = (nb - 1) * size + ho_wq
        acc = np.empty((sh * sw, nb * size), dtype=dspread.dtype)
        for ci in range(c_in_g):
            acc[:] = 0
            for co in range(g * c_out_g, (g + 1) * c_out_g):
                ds = dspread[co, lead + n0 * size : lead + n0 * size + length]
                for i in range(kh):
                    for j in range(kw):
                        wv = w[co, ci, i, j]
                        off = offset[i, j]
                        target = acc[phase[i, j], off : off + length]
                        for k in range(length):
                            target[k] += wv * ds[k]
            _unpad_phases(dx[n0 : n0 + nb, g * c_in_g + ci], acc, ph, pw, sh, sw, wq, size, add)


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv3x3_direct_backward_data_stride2(
    dx, add, dspread, w, groups, ph, pw, wq, size, block, back, lead, odd
):
    """`_conv_direct_backward_data` for 3x3 kernels at stride 2, as a gather (see the stride-1
    kernel), for dilations of one parity on both axes. Tap (i, j) lands in the phase
    (i * dh % 2, j * dw % 2) of the padded input. With odd dilations that is (i % 2, j % 2): the
    four phases receive 4, 2, 2 and 1 taps, all four in one pass over dout. With even dilations
    every tap lands in phase (0, 0) and the other three receive nothing."""
    n_img = (dspread.shape[1] - lead) // size
    c_out, c_in_g = w.shape[0], w.shape[1]
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    one_phase = np.zeros((3, 3), dtype=np.int64)  # dout has a single phase
    for bg in prange(n_blocks * groups):
        n0 = bg // groups * block
        g = bg % groups
        nb = min(block, n_img - n0)
        length = nb * size
        acc = np.empty((2, 4, length), dtype=dspread.dtype)  # two input channels' phases
        a0, a1, a2, a3 = acc[0, 0], acc[0, 1], acc[0, 2], acc[0, 3]
        b0, b1, b2, b3 = acc[1, 0], acc[1, 1], acc[1, 2], acc[1, 3]
        end = (g + 1) * c_in_g
        for c in range(g * c_in_g, end, 2):  # input channels in pairs, and one left over
            pair = c + 1 < end
            ci = c - g * c_in_g
            acc[:] = 0
            for co in range(g * c_out_g, (g + 1) * c_out_g):
                taps = _nine_taps(dspread[co : co + 1], lead + n0 * size, length, one_phase, back)
                w_a = _nine_weights(w, co, ci)
                w_b = _nine_weights(w, co, ci + 1) if pair else w_a
                if not odd:
                    _add_nine_taps(a0, b0, taps, w_a, w_b, pair)
                    continue
                d0, d1, d2, d3, d4, d5, d6, d7, d8 = taps
                w0, w1, w2, w3, w4, w5, w6, w7, w8 = w_a
                v0, v1, v2, v3, v4, v5, v6, v7, v8 = w_b
                for k in range(length):
                    x0, x1, x2, x3, x4 = d0[k], d1[k], d2[k], d3[k], d4[k]
                    x5, x6, x7, x8 = d5[k], d6[k], d7[k], d8[k]
                    a0[k] += w0 * x0 + w2 * x2 + w6 * x6 + w8 * x8
                    a1[k] += w1 * x1 + w7 * x7
                    a2[k] += w3 * x3 + w5 * x5
                    a3[k] += w4 * x4
                    if pair:
                        b0[k] += v0 * x0 + v2 * x2 + v6 * x6 + v8 * x8
                        b1[k] += v1 * x1 + v7 * x7
                        b2[k] += v3 * x3 + v5 * x5
                        b3[k] += v4 * x4
            _unpad_phases(dx[n0 : n0 + nb, c], acc[0], ph, pw, 2, 2, wq, size, add)
            if pair:
                _unpad_phases(dx[n0 : n0 + nb, c + 1], acc[1], ph, pw, 2, 2, wq, size, add)


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv3x3_direct_backward_data_stride1(
    dx, add, dspread, w, groups, ph, pw, wq, size, block, phase, back, lead
):
    """`_conv_direct_backward_data` for 3x3 kernels at stride 1, as a gather: padded input
    pixel j receives sum over co and taps of w[co, ci, tap] * dout[co] at j - offset[tap]. So
    the nine taps go in one pass, as in the forward. `back` is -offset; the `lead` zeros
    before dspread's first image serve the reads before it. Writes dx, or adds to it if add."""
    n_img = (dspread.shape[1] - lead) // size
    c_out, c_in_g = w.shape[0], w.shape[1]
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    h, wd = dx.shape[2], dx.shape[3]
    for bg in prange(n_blocks * groups):
        n0 = bg // groups * block
        g = bg % groups
        nb = min(block, n_img - n0)
        length = nb * size
        acc = np.empty((2, length), dtype=dspread.dtype)
        a0, a1 = acc[0], acc[1]
        end = (g + 1) * c_in_g
        for c in range(g * c_in_g, end, 2):  # input channels in pairs, and one left over
            pair = c + 1 < end
            ci = c - g * c_in_g
            acc[:] = 0
            for co in range(g * c_out_g, (g + 1) * c_out_g):
                taps = _nine_taps(dspread[co : co + 1], lead + n0 * size, length, phase, back)
                w_b = _nine_weights(w, co, ci + 1) if pair else _nine_weights(w, co, ci)
                _add_nine_taps(a0, a1, taps, _nine_weights(w, co, ci), w_b, pair)
            for m in range(nb):
                for y in range(h):
                    start = m * size + (y + ph) * wq + pw
                    _put(dx[n0 + m, c, y], a0[start : start + wd], add)
                    if pair:
                        _put(dx[n0 + m, c + 1, y], a1[start : start + wd], add)


@njit(cache=True, parallel=True, fastmath=True)
def _conv_direct_backward_weight(xq, dspread, groups, kh, kw, size, block, phase, offset, lead):
    """dw[co, ci, i, j] = sum over images and output pixels of dout[n, co] * shifted xq[ci].
    Parallel over output channels: each owns its slice of dw, the sum over n stays in-thread,
    a block of images per dot product, the blocks' sums added in float64. fastmath lets LLVM
    reorder each dot product's sum into SIMD lanes (rounding differs a little)."""
    n_ch = xq.shape[0]
    n_img = xq.shape[2] // size
    c_out = dspread.shape[0]
    c_in_g = n_ch // groups
    c_out_g = c_out // groups
    ho_wq = size - offset.max()
    dwt = np.zeros((c_out, c_in_g, kh, kw), dtype=np.float64)
    for co in prange(c_out):
        g = co // c_out_g
        for n0 in range(0, n_img, block):
            length = (min(block, n_img - n0) - 1) * size + ho_wq
            ds = dspread[co, lead + n0 * size : lead + n0 * size + length]
            for ci in range(c_in_g):
                for i in range(kh):
                    for j in range(kw):
                        start = n0 * size + offset[i, j]
                        xs = xq[g * c_in_g + ci, phase[i, j], start : start + length]
                        s = dspread.dtype.type(0)
                        for k in range(length):
                            s += ds[k] * xs[k]
                        dwt[co, ci, i, j] += s
    return dwt.astype(xq.dtype)


@njit(cache=True, parallel=True, fastmath=True)
def _conv3x3_direct_backward_weight(xq, dspread, groups, size, block, phase, offset, lead):
    """`_conv_direct_backward_weight` for 3x3 kernels: the nine dot products of an input
    channel in one pass over dout (one load of dout per nine multiply-adds)."""
    n_ch = xq.shape[0]
    n_img = xq.shape[2] // size
    c_out = dspread.shape[0]
    c_in_g = n_ch // groups
    c_out_g = c_out // groups
    ho_wq = size - offset.max()
    dwt = np.zeros((c_out, c_in_g, 3, 3), dtype=np.float64)
    zero = dspread.dtype.type(0)
    for co in prange(c_out):
        g = co // c_out_g
        for n0 in range(0, n_img, block):
            length = (min(block, n_img - n0) - 1) * size + ho_wq
            ds = dspread[co, lead + n0 * size : lead + n0 * size + length]
            for ci in range(c_in_g):
                x0, x1, x2, x3, x4, x5, x6, x7, x8 = _nine_taps(
                    xq[g * c_in_g + ci], n0 * size, length, phase, offset
                )
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
                for k in range(length):
                    d = ds[k]
                    s0 += d * x0[k]
                    s1 += d * x1[k]
                    s2 += d * x2[k]
                    s3 += d * x3[k]
                    s4 += d * x4[k]
                    s5 += d * x5[k]
                    s6 += d * x6[k]
                    s7 += d * x7[k]
                    s8 += d * x8[k]
                dwt[co, ci, 0, 0] += s0
                dwt[co, ci, 0, 1] += s1
                dwt[co, ci, 0, 2] += s2
                dwt[co, ci, 1, 0] += s3
                dwt[co, ci, 1, 1] += s4
                dwt[co, ci, 1, 2] += s5
                dwt[co, ci, 2, 0] += s6
                dwt[co, ci, 2, 1] += s7
                dwt[co, ci, 2, 2] += s8
    return dwt.astype(xq.dtype)
