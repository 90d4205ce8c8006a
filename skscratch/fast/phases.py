"""The layout the direct convolution kernels read and write: padded planes split into phases.

For stride 1, treat each zero-padded input plane (HP x WP) as one flat row. The output pixel
(oy, ox), computed on the padded width, sits at k = oy * WP + ox, and its tap (i, j) reads the
flat input at k + i*dh*WP + j*dw. So every tap is one long contiguous multiply-add over the
whole plane, which LLVM turns into SIMD FMAs. The WP - WO extra columns per row are computed
and then dropped.

For stride s (sh, sw), split the padded plane into its sh * sw phases first: phase (p, q) is
the plane of pixels (y, x) with y % sh == p and x % sw == q, of size HQ x WQ (HQ = ceil(HP /
sh), WQ = ceil(WP / sw)). Tap (i, j) of output (oy, ox) reads padded pixel (oy*sh + i*dh,
ox*sw + j*dw), which is pixel (oy + i*dh // sh, ox + j*dw // sw) of phase (i*dh % sh,
j*dw % sw): a stride-1 read of one phase. So the same flat-row loops serve every stride, each
tap reading its own phase at its own offset (`phase`, `offset`, both (KH, KW)); stride 1 is the
case of a single phase. No output is computed only to be thrown away.

Small planes (8 x 8) make short rows, on which the loop overhead and the scalar remainder of
each SIMD loop dominate. So the buffers put the images of one channel one after another,
(C, phases, N * size) with `size` the flat length of a phase plane, and the loops run over a
block of images at once: image m's pixel k sits at m * size + k. `size` leaves enough zeros
after each plane that no tap of one image's outputs reads into the next image.

"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from skscratch.fast._rows import _copy_every, _zero

# Images per block in the direct kernels: enough that a block's flat row is at least about a
# thousand values long (long SIMD loops), few enough that a block stays in the core's cache
# (measured on 2 AVX2 cores: 1024 beat 4096 and 8192 on 8x8 planes and at stride 2).
_BLOCK_VALUES = 1024


class Phases(NamedTuple):
    wq: int  # columns of each phase plane (its flat row width)
    size: int  # flat length of one image's phase plane, with zeros after the last row
    block: int  # images per block
    phase: np.ndarray  # (KH, KW): which phase tap (i, j) reads
    offset: np.ndarray  # (KH, KW): where in it, flat


def phase_geometry(x_shape, kernel, stride, padding, dilation, out_size) -> Phases:
    """The phase layout of a convolution of an input x_shape (N, C, H, W) with a kernel (KH, KW)."""
    (_, _, h, wd), (kh, kw) = x_shape, kernel
    (sh, sw), (dh, dw) = stride, dilation
    hq = -(-(h + 2 * padding[0]) // sh)
    wq = -(-(wd + 2 * padding[1]) // sw)
    i, j = np.arange(kh)[:, None] * dh, np.arange(kw)[None, :] * dw
    phase = (i % sh) * sw + j % sw
    offset = (i // sh) * wq + j // sw
    # The widest tap reads a whole output's worth (HO * WQ) from its offset on.
    size = max(hq * wq, int(offset.max()) + out_size[0] * wq)
    block = max(1, _BLOCK_VALUES // size)
    return Phases(wq, size, block, phase.astype(np.int64), offset.astype(np.int64))


@njit(cache=True, parallel=True)
def _pad_phases(x, ph, pw, sh, sw, wq, size, out):
    """(N, C, H, W) -> (C, sh*sw, N * size): the zero-padded planes split into their stride
    phases, each flattened at row width wq, the images of a channel one after another."""
    n_img, n_ch = x.shape[0], x.shape[1]
    for nc in prange(n_img * n_ch):
        c = nc // n_img
        n = nc % n_img
        _fill_phases(out[c, :, n * size : (n + 1) * size], x[n, c], ph, pw, sh, sw, wq)


@njit(cache=True, inline="always")
def _fill_phases(dst, plane, ph, pw, sh, sw, wq):
    """Write one (H, W) plane, zero-padded and split into stride phases, into dst (sh*sw, size)."""
    h, w = plane.shape
    for p in range(sh):
        y0 = (p - ph) % sh  # the first input row in row phase p
        if sw == 2:
            # Both column phases of a row in one pass over it: the even input columns go to one
            # phase, the odd to the other (a loop the compiler vectorises with shuffles).
            even, odd = dst[p * 2 + pw % 2], dst[p * 2 + (pw + 1) % 2]
            e0, o0 = pw // 2, (pw + 1) // 2  # where the first even / odd input column lands
            n_odd = w // 2
            done_e = done_o = 0  # each phase's [:done] is written; gaps are zeroed once
            for y in range(y0, h, sh):
                src, base = plane[y], (y + ph) // sh * wq
                _zero(even[done_e : base + e0])
                _zero(odd[done_o : base + o0])
                e_row = even[base + e0 : base + e0 + w - n_odd]
                o_row = odd[base + o0 : base + o0 + n_odd]
                for k in range(n_odd):
                    e_row[k] = src[2 * k]
                    o_row[k] = src[2 * k + 1]
                if w % 2:
                    e_row[n_odd] = src[w - 1]
                done_e, done_o = base + e0 + w - n_odd, base + o0 + n_odd
            _zero(even[done_e:])
            _zero(odd[done_o:])
            continue
        for q in range(sw):
            phase = dst[p * sw + q]
            x0 = (q - pw) % sw  # the first input column in column phase q
            count = (w - 1 - x0) // sw + 1 if x0 < w else 0
            done = 0  # phase[:done] is written; each gap is zeroed once, not the whole plane
            for y in range(y0, h, sh):
                if count == 0:
                    break
                src = plane[y]
                start = (y + ph) // sh * wq + (x0 + pw) // sw
                _zero(phase[done:start])
                _copy_every(phase[start : start + count], src, x0, sw)
                done = start + count
            _zero(phase[done:])


@njit(cache=True, parallel=True)
def _spread_rows(dout, wq, size, lead, out):
    """(N, C, HO, WO) -> (C, lead + N * size): each image's rows laid out at the phase width wq,
    the extra columns and the rest of its `size` zero, after `lead` zeros, so that the backward
    taps can run over whole flat planes too (and read up to `lead` values before the first)."""
    n_img, n_ch, ho, wo = dout.shape
    out[:, :lead] = 0
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        plane = out[c, lead + n * size : lead + (n + 1) * size]  # written whole, zeros included
        for y in range(ho):
            row = plane[y * wq : (y + 1) * wq]
            src = dout[n, c, y]
            for k in range(wo):
                row[k] = src[k]
            _zero(row[wo:])
        _zero(plane[ho * wq :])


@njit(cache=True, inline="always")
def _unpad_phases(dst, acc, ph, pw, sh, sw, wq, size, add):
    """The inverse of `_fill_phases` for a block of images: dst (nb, H, W) <- (or += if add) the
    pixels of the padded, phase-split planes acc (sh*sw, nb * size), without the padding."""
    h, wd = dst.shape[1], dst.shape[2]
    for m in range(dst.shape[0]):
        for y in range(h):
            p, row = (y + ph) % sh, (y + ph) // sh
            for q in range(sw):
                x0 = (q - pw) % sw
                if x0 >= wd:
                    continue
                src = acc[p * sw + q, m * size + row * wq + (x0 + pw) // sw :]
                line = dst[m, y]
                for k in range((wd - 1 - x0) // sw + 1):
                    line[x0 + k * sw] = line[x0 + k * sw] + src[k] if add else src[k]


@njit(cache=True, inline="always")
def _add_nine_taps(a0, a1, taps, w_a, w_b, pair):
    """a0 += sum_t w_a[t] * taps[t]; and if pair, a1 += sum_t w_b[t] * taps[t] in the same pass,
    so that two outputs share each value loaded."""
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = taps
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w_a
    if not pair:
        for k in range(a0.size):
            a0[k] += (
                w0 * t0[k] + w1 * t1[k] + w2 * t2[k]
                + w3 * t3[k] + w4 * t4[k] + w5 * t5[k]
                + w6 * t6[k] + w7 * t7[k] + w8 * t8[k]
            )  # fmt: skip
        return
    v0, v1, v2, v3, v4, v5, v6, v7, v8 = w_b
    for k in range(a0.size):
        x0, x1, x2, x3, x4 = t0[k], t1[k], t2[k], t3[k], t4[k]
        x5, x6, x7, x8 = t5[k], t6[k], t7[k], t8[k]
        a0[k] += (
            w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4
            + w5 * x5 + w6 * x6 + w7 * x7 + w8 * x8
        )  # fmt: skip
        a1[k] += (
            v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
            + v5 * x5 + v6 * x6 + v7 * x7 + v8 * x8
        )  # fmt: skip


@njit(cache=True, inline="always")
def _nine_weights(w, co, ci):
    """The nine taps of the 3x3 kernel w[co, ci], in row order."""
    return (
        w[co, ci, 0, 0], w[co, ci, 0, 1], w[co, ci, 0, 2],
        w[co, ci, 1, 0], w[co, ci, 1, 1], w[co, ci, 1, 2],
        w[co, ci, 2, 0], w[co, ci, 2, 1], w[co, ci, 2, 2],
    )  # fmt: skip


@njit(cache=True, inline="always")
def _nine_taps(plane, start, length, phase, offset):
    """The nine shifted views of a phase-split plane that a 3x3 kernel's taps read."""
    return (
        plane[phase[0, 0], start + offset[0, 0] : start + offset[0, 0] + length],
        plane[phase[0, 1], start + offset[0, 1] : start + offset[0, 1] + length],
        plane[phase[0, 2], start + offset[0, 2] : start + offset[0, 2] + length],
        plane[phase[1, 0], start + offset[1, 0] : start + offset[1, 0] + length],
        plane[phase[1, 1], start + offset[1, 1] : start + offset[1, 1] + length],
        plane[phase[1, 2], start + offset[1, 2] : start + offset[1, 2] + length],
        plane[phase[2, 0], start + offset[2, 0] : start + offset[2, 0] + length],
        plane[phase[2, 1], start + offset[2, 1] : start + offset[2, 1] + length],
        plane[phase[2, 2], start + offset[2, 2] : start + offset[2, 2] + length],
    )
