"""Direct grouped convolution, forward: no im2col, each tap one long multiply-add.

The layout (padded planes split into stride phases, blocks of images as one flat row) is
described in `skscratch.fast.phases`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from skscratch.fast.phases import _add_nine_taps, _fill_phases, _nine_taps, _nine_weights


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv_direct_forward(xq, w, groups, ho, wo, wq, size, block, phase, offset, out):
    """out[n, co] = sum over the group's ci and taps of w[co, ci, i, j] * shifted xq[ci] (image n),
    for blocks of `block` images at a time. out: (N, C_out, HO, WO), written whole."""
    n_img = xq.shape[2] // size
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    for bg in prange(n_blocks * groups):
        n0 = bg // groups * block
        g = bg % groups
        nb = min(block, n_img - n0)
        length = (nb - 1) * size + ho * wq  # the last image needs only its own outputs
        acc = np.empty(length, dtype=xq.dtype)
        for co in range(g * c_out_g, (g + 1) * c_out_g):
            acc[:] = 0
            for ci in range(c_in_g):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[co, ci, i, j]
                        start = n0 * size + offset[i, j]
                        xs = xq[g * c_in_g + ci, phase[i, j], start : start + length]
                        for k in range(length):
                            acc[k] += wv * xs[k]
            for m in range(nb):
                for y in range(ho):
                    out[n0 + m, co, y] = acc[m * size + y * wq : m * size + y * wq + wo]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv3x3_direct_forward(
    x, w, groups, ph, pw, sh, sw, ho, wo, wq, size, block, phase, offset, out
):
    """`_conv_direct_forward` for 3x3 kernels, from the unpadded x (N, C, H, W): each block pads
    its own images into a small buffer that stays in cache (rather than all of x through memory
    first), and the nine taps of an input channel go in one pass (one load and store of the
    accumulator per nine multiply-adds instead of per one)."""
    n_img = x.shape[0]
    c_out, c_in_g = w.shape[0], w.shape[1]
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    for bg in prange(n_blocks * groups):
        n0 = bg // groups * block
        g = bg % groups
        nb = min(block, n_img - n0)
        xq = np.empty((c_in_g, sh * sw, nb * size), dtype=x.dtype)
        for ci in range(c_in_g):
            for m in range(nb):
                plane = x[n0 + m, g * c_in_g + ci]
                _fill_phases(xq[ci, :, m * size : (m + 1) * size], plane, ph, pw, sh, sw, wq)
        length = (nb - 1) * size + ho * wq
        acc = np.empty((2, length), dtype=x.dtype)
        a0, a1 = acc[0], acc[1]
        end = (g + 1) * c_out_g
        for co in range(g * c_out_g, end, 2):  # output channels in pairs, and one left over
            pair = co + 1 < end
            acc[:] = 0
            for ci in range(c_in_g):
                taps = _nine_taps(xq[ci], 0, length, phase, offset)
                w_b = _nine_weights(w, co + 1, ci) if pair else _nine_weights(w, co, ci)
                _add_nine_taps(a0, a1, taps, _nine_weights(w, co, ci), w_b, pair)
            for m in range(nb):
                for y in range(ho):
                    start = m * size + y * wq
                    out[n0 + m, co, y] = a0[start : start + wo]
                    if pair:
                        out[n0 + m, co + 1, y] = a1[start : start + wo]
