"""im2col and col2im: convolution as a gather followed by a matrix product.

A KH x KW convolution reads, for every output position, a KH x KW window of every input channel.
im2col copies those windows into the columns of a matrix, so that the convolution becomes one
matrix product of the reshaped weight with that matrix:

    cols[n, (c, i, j), (oy, ox)] = x_pad[n, c, oy*stride + i*dilation, ox*stride + j*dilation]

with output size (the same formula as `torch.nn.Conv2d`)

    H_out = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1

col2im is the adjoint (transpose) of that gather, not its inverse: it scatters every column entry
back to the pixel it was read from and *adds*, because with overlapping windows one pixel is read
by several columns, and its gradient is the sum of theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, int_tuple, nonempty, pair, positive_int


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length on one axis: (size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x: NDArray, kh: int, kw: int, *, stride=1, padding=0, dilation=1) -> NDArray:
    """Gather every KH x KW window of x into a column: one strided slice per kernel tap.

    x: (N, C, H, W). Returns cols: (N, C*KH*KW, H_out*W_out), rows ordered (c, i, j).
    """
    x = float_array("x", x, ndim=4)
    nonempty("x", x)
    kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo) = window_geometry(
        x.shape, kh, kw, stride, padding, dilation
    )
    n, c = x.shape[:2]
    # Pad x, then copy one strided slice of it per kernel tap (i, j) into cols.
    # BEGIN SOLUTION
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # The tap (i, j) of every window: rows i*dh, i*dh + sh, ... of the padded input.
            y0, x0 = i * dh, j * dw
            cols[:, :, i, j] = x_pad[:, :, y0 : y0 + sh * ho : sh, x0 : x0 + sw * wo : sw]
    return cols.reshape(n, c * kh * kw, ho * wo)
    # END SOLUTION


def col2im(
    cols: NDArray, x_shape: Sequence[int], kh: int, kw: int, *, stride=1, padding=0, dilation=1
) -> NDArray:
    """The adjoint of `im2col`: scatter every column entry back to its pixel; overlaps add.

    cols: (N, C*KH*KW, H_out*W_out). Returns dx: x_shape = (N, C, H, W).
    """
    cols, x_shape, geometry = checked_col2im_args(cols, x_shape, kh, kw, stride, padding, dilation)
    kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo) = geometry
    n, c, h, w = x_shape
    # Scatter each tap's slice back into a zero padded array with +=, then crop the padding.
    # BEGIN SOLUTION
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    dx_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            dx_pad[:, :, y0 : y0 + sh * ho : sh, x0 : x0 + sw * wo : sw] += cols[:, :, i, j]
    return dx_pad[:, :, ph : ph + h, pw : pw + w]
    # END SOLUTION


def window_geometry(x_shape, kh, kw, stride, padding, dilation):
    """Check the window arguments for an input of x_shape (N, C, H, W); return
    (kh, kw, stride, padding, dilation, (H_out, W_out)), each of the middle three an (h, w) pair."""
    kh = positive_int("kh", kh)
    kw = positive_int("kw", kw)
    sh, sw = pair("stride", stride, minimum=1)
    ph, pw = pair("padding", padding, minimum=0)
    dh, dw = pair("dilation", dilation, minimum=1)
    h, w = x_shape[2], x_shape[3]
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"output size would be {ho}x{wo}: input {h}x{w} with padding {(ph, pw)} is smaller "
            f"than the dilated kernel {(dh * (kh - 1) + 1, dw * (kw - 1) + 1)}"
        )
    return kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo)


def checked_col2im_args(cols, x_shape, kh, kw, stride, padding, dilation):
    """Check col2im's arguments; return cols as an array, x_shape as a tuple, the geometry."""
    cols = float_array("cols", cols, ndim=3)
    shape = int_tuple("x_shape", x_shape)
    if len(shape) != 4 or shape[0] < 0 or min(shape[1:]) < 1:
        raise ValueError(f"x_shape must be (N, C, H, W) with N >= 0 and C, H, W >= 1, got {shape}")
    geometry = window_geometry(shape, kh, kw, stride, padding, dilation)
    kh, kw, _, _, _, (ho, wo) = geometry
    expected = (shape[0], shape[1] * kh * kw, ho * wo)
    if cols.shape != expected:
        raise ValueError(
            f"cols must have shape (N, C*KH*KW, H_out*W_out) = {expected} for this x_shape and "
            f"kernel, got {cols.shape}"
        )
    return cols, shape, geometry
