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
    """(N, C, H, W) -> (N, C*KH*KW, HO*WO); rows ordered (c, i, j); padding reads as zero.

    Each output row is written once, its padding zeros included, by copying input rows into it
    (at stride 1 a contiguous copy, which the compiler vectorises)."""
    n_img, n_ch, h, w = x.shape
    cols = np.empty((n_img, n_ch * kh * kw, ho * wo), dtype=x.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                x0 = ox_lo * sw + j * dw - pw  # the input column of output column ox_lo
                dst = cols[n, (c * kh + i) * kw + j]
                _zero(dst[: oy_lo * wo])
                for oy in range(oy_lo, oy_hi):
                    row = dst[oy * wo : (oy + 1) * wo]
                    _zero(row[:ox_lo])
                    _copy_every(row[ox_lo:ox_hi], x[n, c, oy * sh + i * dh - ph], x0, sw)
                    _zero(row[ox_hi:])
                _zero(dst[oy_hi * wo :])
    return cols


@njit(cache=True, parallel=True)
def _col2im(cols, n_ch, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """The adjoint of `_im2col`: (N, C*KH*KW, HO*WO) -> (N, C, H, W), overlapping taps add.

    Each (image, channel) plane belongs to one iteration, which zeroes it and adds every tap's
    rows into it (at stride 1 a contiguous add)."""
    n_img = cols.shape[0]
    dx = np.empty((n_img, n_ch, h, w), dtype=cols.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for y in range(h):
            _zero(dx[n, c, y])
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                x0 = ox_lo * sw + j * dw - pw
                src = cols[n, (c * kh + i) * kw + j]
                for oy in range(oy_lo, oy_hi):
                    row = src[oy * wo + ox_lo : oy * wo + ox_hi]
                    _add_every(dx[n, c, oy * sh + i * dh - ph], x0, sw, row)
    return dx


@njit(cache=True, inline="always")
def _copy_every(dst, src, start, step):
    """dst[k] = src[start + k * step] for every k of dst."""
    if step == 1:
        s = src[start : start + dst.size]  # a view indexed by the loop variable vectorises
        for k in range(dst.size):
            dst[k] = s[k]
    else:
        for k in range(dst.size):
            dst[k] = src[start + k * step]


@njit(cache=True, inline="always")
def _add_every(dst, start, step, src):
    """dst[start + k * step] += src[k] for every k of src."""
    if step == 1:
        d = dst[start : start + src.size]
        for k in range(src.size):
            d[k] += src[k]
    else:
        for k in range(src.size):
            dst[start + k * step] += src[k]


@njit(cache=True, parallel=True)
def _every_stride(x, sh, sw):
    """x[:, :, ::sh, ::sw] as a new array: the columns of a 1x1 window without padding."""
    n_img, n_ch, h, w = x.shape
    ho, wo = (h - 1) // sh + 1, (w - 1) // sw + 1
    out = np.empty((n_img, n_ch, ho, wo), dtype=x.dtype)
    for nc in prange(n_img * n_ch):
        src, dst = x[nc // n_ch, nc % n_ch], out[nc // n_ch, nc % n_ch]
        for y in range(ho):
            for k in range(wo):
                dst[y, k] = src[y * sh, k * sw]
    return out


@njit(cache=True, parallel=True)
def _to_every_stride(cols, h, w, sh, sw):
    """The adjoint of `_every_stride`: (N, C, HO, WO) -> (N, C, H, W) with the values at every
    (sh, sw)-th pixel and zeros between, each plane written in one pass."""
    n_img, n_ch, ho, wo = cols.shape
    dx = np.empty((n_img, n_ch, h, w), dtype=cols.dtype)
    for nc in prange(n_img * n_ch):
        src, dst = cols[nc // n_ch, nc % n_ch], dx[nc // n_ch, nc % n_ch]
        for y in range(h):
            _zero(dst[y])
            if y % sh == 0:
                for k in range(wo):
                    dst[y, k * sw] = src[y // sh, k]
    return dx


# -- direct grouped convolution --------------------------------------------------------------
#
# For stride 1, treat each zero-padded input plane (HP x WP) as one flat row. The output pixel
# (oy, ox), computed on the padded width, sits at k = oy * WP + ox, and its tap (i, j) reads the
# flat input at k + i*dh*WP + j*dw. So every tap is one long contiguous multiply-add over the
# whole plane, which LLVM turns into SIMD FMAs. The WP - WO extra columns per row are computed
# and then dropped.
#
# For stride s (sh, sw), split the padded plane into its sh * sw phases first: phase (p, q) is
# the plane of pixels (y, x) with y % sh == p and x % sw == q, of size HQ x WQ (HQ = ceil(HP /
# sh), WQ = ceil(WP / sw)). Tap (i, j) of output (oy, ox) reads padded pixel (oy*sh + i*dh,
# ox*sw + j*dw), which is pixel (oy + i*dh // sh, ox + j*dw // sw) of phase (i*dh % sh,
# j*dw % sw): a stride-1 read of one phase. So the same flat-row loops serve every stride, each
# tap reading its own phase at its own offset (`phase`, `offset`, both (KH, KW)); stride 1 is the
# case of a single phase. No output is computed only to be thrown away.
#
# Small planes (8 x 8) make short rows, on which the loop overhead and the scalar remainder of
# each SIMD loop dominate. So the buffers put the images of one channel one after another,
# (C, phases, N * size) with `size` the flat length of a phase plane, and the loops run over a
# block of images at once: image m's pixel k sits at m * size + k. `size` leaves enough zeros
# after each plane that no tap of one image's outputs reads into the next image.


@njit(cache=True, parallel=True)
def _pad_phases(x, ph, pw, sh, sw, wq, size):
    """(N, C, H, W) -> (C, sh*sw, N * size): the zero-padded planes split into their stride
    phases, each flattened at row width wq, the images of a channel one after another."""
    n_img, n_ch = x.shape[0], x.shape[1]
    out = np.empty((n_ch, sh * sw, n_img * size), dtype=x.dtype)
    for nc in prange(n_img * n_ch):
        c = nc // n_img
        n = nc % n_img
        _fill_phases(out[c, :, n * size : (n + 1) * size], x[n, c], ph, pw, sh, sw, wq)
    return out


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


@njit(cache=True, inline="always")
def _zero(a):
    for k in range(a.size):
        a[k] = 0


@njit(cache=True, parallel=True)
def _spread_rows(dout, wq, size, lead):
    """(N, C, HO, WO) -> (C, lead + N * size): each image's rows laid out at the phase width wq,
    the extra columns and the rest of its `size` zero, after `lead` zeros, so that the backward
    taps can run over whole flat planes too (and read up to `lead` values before the first)."""
    n_img, n_ch, ho, wo = dout.shape
    out = np.empty((n_ch, lead + n_img * size), dtype=dout.dtype)
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
    return out


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv_direct_forward(xq, w, groups, ho, wo, wq, size, block, phase, offset):
    """out[n, co] = sum over the group's ci and taps of w[co, ci, i, j] * shifted xq[ci] (image n),
    for blocks of `block` images at a time."""
    n_img = xq.shape[2] // size
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    out = np.empty((n_img, c_out, ho, wo), dtype=xq.dtype)
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
    return out


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv3x3_direct_forward(x, w, groups, ph, pw, sh, sw, ho, wo, wq, size, block, phase, offset):
    """`_conv_direct_forward` for 3x3 kernels, from the unpadded x (N, C, H, W): each block pads
    its own images into a small buffer that stays in cache (rather than all of x through memory
    first), and the nine taps of an input channel go in one pass (one load and store of the
    accumulator per nine multiply-adds instead of per one)."""
    n_img = x.shape[0]
    c_out, c_in_g = w.shape[0], w.shape[1]
    c_out_g = c_out // groups
    n_blocks = (n_img + block - 1) // block
    out = np.empty((n_img, c_out, ho, wo), dtype=x.dtype)
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
    return out


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
def _put(dst, src, add):
    """dst[:] = src, or dst += src if add (1-D, of one length)."""
    for k in range(dst.size):
        dst[k] = dst[k] + src[k] if add else src[k]


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


# -- ReLU, on flat arrays, in parallel chunks ---------------------------------------------------

_CHUNK = 1 << 16


@njit(cache=True, parallel=True)
def _relu_forward(x):
    """out = x where x > 0, else 0 (NaN gives 0, as np.where(x > 0, x, 0)). x: 1-D."""
    out = np.empty_like(x)
    zero = x.dtype.type(0)
    for b in prange((x.size + _CHUNK - 1) // _CHUNK):
        src = x[b * _CHUNK : (b + 1) * _CHUNK]
        dst = out[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(src.size):
            dst[k] = src[k] if src[k] > zero else zero
    return out


@njit(cache=True, parallel=True)
def _relu_forward_sum(x, r):
    """The ReLU of x + r (1-D both), as `_relu_forward(x + r)` without writing x + r out."""
    out = np.empty_like(x)
    zero = x.dtype.type(0)
    for b in prange((x.size + _CHUNK - 1) // _CHUNK):
        src = x[b * _CHUNK : (b + 1) * _CHUNK]
        res = r[b * _CHUNK : (b + 1) * _CHUNK]
        dst = out[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(src.size):
            v = src[k] + res[k]
            dst[k] = v if v > zero else zero
    return out


@njit(cache=True, parallel=True)
def _relu_backward(dout, out):
    """dx = dout where out > 0, else 0. Both 1-D."""
    dx = np.empty_like(dout)
    zero = dout.dtype.type(0)
    for b in prange((dout.size + _CHUNK - 1) // _CHUNK):
        d = dout[b * _CHUNK : (b + 1) * _CHUNK]
        o = out[b * _CHUNK : (b + 1) * _CHUNK]
        dst = dx[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(d.size):
            dst[k] = d[k] if o[k] > zero else zero
    return dx


# -- batch norm (+ ReLU), fused, for (N, C, H, W) ------------------------------------------------
#
# A channel's statistics are sums over every image. The kernels read x in memory order, image by
# image, in parallel chunks of images that each keep their own per-channel sums (added at the
# end): reading one channel across all images instead jumps C*H*W values between planes, which
# on small planes (8 x 8) ran at half the speed. The sums are accumulated in float64, so float32
# batches of 10^5 values per channel keep their precision. The outputs depend on one plane each
# and are written plane by plane. The reference is skscratch.batchnorm (followed by
# skscratch.activations.relu).

_BN_CHUNKS = 16  # chunks of images per batch: enough to keep every thread busy


# Reassociation lets the compiler split each sum into vector lanes; without NaN/inf assumptions
# (the rest of fastmath), a NaN in the batch still comes out as NaN.
@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _bn_stats(x):
    """Per-channel mean and biased variance of x (N, C, H, W), in float64, in one pass:
    var = E[x^2] - E[x]^2, which float64 keeps exact enough for activations of any sensible
    scale (it would lose digits only where the mean is 10^8 times the spread)."""
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    n_chunks = min(n_img, _BN_CHUNKS)
    sums = np.zeros((n_chunks, 2, n_ch))  # per chunk: sum of x, sum of x^2
    for chunk in prange(n_chunks):
        for n in range(chunk * n_img // n_chunks, (chunk + 1) * n_img // n_chunks):
            for c in range(n_ch):
                plane = x[n, c].ravel()
                s = 0.0
                q = 0.0
                for k in range(plane.size):
                    v = np.float64(plane[k])
                    s += v
                    q += v * v
                sums[chunk, 0, c] += s
                sums[chunk, 1, c] += q
    total = sums.sum(axis=0)
    mean = total[0] / m
    var = np.maximum(total[1] / m - mean * mean, 0.0)
    return mean, var


@njit(cache=True, inline="always")
def _affine_relu(x, a, b, relu, zero):
    """a * x + b, then max(., zero) if relu: batch norm's output from its scale and shift. The
    forward and backward kernels both compute it here, with the same float operations (no
    fused multiply-add in either), so the backward's ReLU mask is exactly the forward's."""
    v = a * x + b
    return max(v, zero) if relu else v


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
            dst[k] = _affine_relu(src[k], a, b, relu, zero)
    return out


# Reassociation only (see _bn_stats): contraction into fused multiply-adds would round the
# recomputed output differently from the forward's, and move the ReLU's kink.
@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _bn_relu_backward(dout, x, scale, shift, mean, inv_std, gamma, relu, training):
    """Batch-norm (+ ReLU) backward from the saved input x and the forward's scale and shift.

    g = dout masked where the output scale * x + shift was <= 0 (if relu); xhat = (x - mean) *
    inv_std; then per channel dbeta = sum g, dgamma = sum g * xhat, and
    dx = gamma * inv_std * (g - dbeta / m - xhat * dgamma / m)   (training; without the two
    mean terms in evaluation mode). Returns dx, dgamma, dbeta.
    """
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    zero = x.dtype.type(0)
    n_chunks = min(n_img, _BN_CHUNKS)
    sums = np.zeros((n_chunks, 2, n_ch))  # per chunk: sum of g, sum of g * (x - mean)
    for chunk in prange(n_chunks):
        for n in range(chunk * n_img // n_chunks, (chunk + 1) * n_img // n_chunks):
            for c in range(n_ch):
                mu, a, b = mean[c], scale[c], shift[c]
                d = dout[n, c].ravel()
                xs = x[n, c].ravel()
                sg = 0.0
                sgx = 0.0
                for k in range(d.size):
                    g = d[k] if (not relu or _affine_relu(xs[k], a, b, relu, zero) > zero) else zero
                    sg += g
                    sgx += g * (xs[k] - mu)
                sums[chunk, 0, c] += sg
                sums[chunk, 1, c] += sgx
    total = sums.sum(axis=0)
    dbeta = total[0].astype(x.dtype)
    dgamma = (total[1] * inv_std).astype(x.dtype)  # sum of g * xhat
    dx = np.empty_like(x)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        mu, istd, a, b = mean[c], inv_std[c], scale[c], shift[c]
        coef = gamma[c] * istd
        mean_g = x.dtype.type(total[0, c] / m if training else 0.0)
        mean_gx = x.dtype.type(total[1, c] * istd / m if training else 0.0)
        d = dout[n, c].ravel()
        xs = x[n, c].ravel()
        dst = dx[n, c].ravel()
        for k in range(d.size):
            g = d[k] if (not relu or _affine_relu(xs[k], a, b, relu, zero) > zero) else zero
            xhat = (xs[k] - mu) * istd
            dst[k] = coef * (g - mean_g - xhat * mean_gx)
    return dx, dgamma, dbeta


def compilations() -> int:
    """How many kernel signatures this process has compiled rather than loaded from numba's
    on-disk cache (0 with NUMBA_DISABLE_JIT=1, where nothing compiles)."""
    return sum(
        sum(f.stats.cache_misses.values()) for f in globals().values() if hasattr(f, "stats")
    )


def num_threads() -> int:
    """How many threads the parallel kernels use (numba's setting, NUMBA_NUM_THREADS)."""
    from numba import get_num_threads

    return get_num_threads()


# The SK unit's select step (skscratch.sk): V = sum_m a_m U_m, a_m one weight per image and
# channel. The branches come as a tuple of M arrays (N, C, H, W); a is (N, M, C).


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum(us, a):
    """v[n, c] = sum_m a[n, m, c] * us[m][n, c], in one pass over the branches."""
    n_img, n_ch = a.shape[0], a.shape[2]
    v = np.empty_like(us[0])
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        dst = v[n, c].ravel()
        src = us[0][n, c].ravel()
        weight = a[n, 0, c]
        for k in range(dst.size):
            dst[k] = weight * src[k]
        for m in range(1, len(us)):
            src = us[m][n, c].ravel()
            weight = a[n, m, c]
            for k in range(dst.size):
                dst[k] += weight * src[k]
    return v


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum_backward_weights(dv, us):
    """da[n, m, c] = sum_{h,w} dv[n, c] * us[m][n, c]: the gradient of each branch's weight."""
    n_img, n_ch = dv.shape[0], dv.shape[1]
    da = np.empty((n_img, len(us), n_ch), dtype=dv.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        d = dv[n, c].ravel()
        for m in range(len(us)):
            src = us[m][n, c].ravel()
            acc = dv.dtype.type(0)
            for k in range(d.size):
                acc += d[k] * src[k]
            da[n, m, c] = acc
    return da


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum_backward_branches(dv, a, g):
    """du[m, n, c] = a[n, m, c] * dv[n, c] + g[n, c]: each branch's gradient through the
    weighted sum plus the gradient that all branches share through the fuse step's average
    pool, which is the same g[n, c] = ds[n, c] / (H * W) at every pixel."""
    n_img, n_br, n_ch = a.shape
    du = np.empty((n_br, *dv.shape), dtype=dv.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        d = dv[n, c].ravel()
        shared = g[n, c]
        for m in range(n_br):
            dst = du[m, n, c].ravel()
            weight = a[n, m, c]
            for k in range(d.size):
                dst[k] = weight * d[k] + shared
    return du
