# %% [markdown]
# # 3. Convolution: from nested loops to im2col
#
# Every branch of an SK unit is a convolution, so that is where we start. This tutorial
# writes a convolution the slow, obvious way (seven nested loops), then rewrites it as
# **im2col** (gather every input window into a column of a matrix) followed by **one matrix
# product**, which is how `skscratch.conv2d_forward` computes it. At the end the three versions
# are checked against each other.
#
# Conventions are PyTorch's: tensors are `(N, C, H, W)`, a weight is `(C_out, C_in, KH, KW)`
# (grouped convolutions come in tutorial 4), and "convolution" means cross-correlation (the
# kernel is not flipped):
#
#     out[n, co, oy, ox] = b[co] + sum_{c,i,j} w[co, c, i, j] * x_pad[n, c, oy*s + i*d, ox*s + j*d]
#
# where `x_pad` is `x` with `pad` zeros on every side, `s` is the stride and `d` the dilation.

# %%
import inspect

import numpy as np

from skscratch import conv2d_forward, conv_output_size
from skscratch.im2col import im2col
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## The output size
#
# Along one axis the padded input has `H + 2*pad` pixels. A kernel of `KH` taps spaced
# `dilation` apart spans `dilation*(KH - 1) + 1` pixels. Its first position starts at 0, the
# next ones every `stride` pixels, and the last one must still end inside the padded input:
#
#     H_out = (H + 2*pad - dilation*(KH - 1) - 1) // stride + 1
#
# The floor division drops the last few rows when the stride does not divide the remaining
# length evenly: those rows are never read.
#
# We check the formula three ways for several settings: against a direct count of the window
# positions, against `skscratch.conv_output_size`, and against the shape `conv2d_forward`
# actually returns. The width gets the same settings on a different input size, so both axes are
# exercised.


# %%
def output_size_formula(size, k, stride, pad, dilation):
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def count_window_positions(size, k, stride, pad, dilation):
    span = dilation * (k - 1) + 1  # pixels covered by one dilated window
    return len(range(0, size + 2 * pad - span + 1, stride))  # start positions that fit


settings = [  # (H, K, stride, pad, dilation)
    (32, 3, 1, 1, 1),  # "same" 3x3: the SK unit's first branch
    (32, 3, 1, 2, 2),  # "same" dilated 3x3: the second branch
    (32, 3, 2, 1, 1),  # stride 2 halves the size
    (32, 3, 2, 2, 2),  # a strided SK unit's second branch
    (7, 3, 2, 0, 2),  # 7 - 5 = 2 pixels left over, stride 2: 2 positions
    (6, 2, 2, 0, 1),  # non-overlapping 2x2 windows
    (32, 7, 2, 3, 1),  # an ImageNet-style 7x7/2 stem
    (5, 5, 1, 0, 1),  # the kernel covers the whole input: one output
]
print(" H  K  s  p  d | H_out  W_out (W = H + 3)")
for h, k, s, p, d in settings:
    x = np.zeros((1, 1, h, h + 3))
    w = np.zeros((1, 1, k, k))
    out, _ = conv2d_forward(x, w, stride=s, padding=p, dilation=d)
    h_out, w_out = output_size_formula(h, k, s, p, d), output_size_formula(h + 3, k, s, p, d)
    assert out.shape == (1, 1, h_out, w_out)
    assert h_out == count_window_positions(h, k, s, p, d) == conv_output_size(h, k, s, p, d)
    assert w_out == count_window_positions(h + 3, k, s, p, d)
    print(f"{h:2d} {k:2d} {s:2d} {p:2d} {d:2d} | {h_out:5d}  {w_out:5d}")

# %% [markdown]
# Note the second row: a 3x3 kernel with dilation 2 spans 5 pixels, so padding 2 keeps the size
# (32 -> 32). In general `pad = dilation*(K - 1)/2` keeps the size at stride 1, which is why the
# SK unit pads each branch by its dilation.
#
# ## Version 1: nested loops
#
# The definition, transcribed literally. This is our own first version, written to be read, not
# run on anything large: one loop per index of the sum and of the output.


# %%
def conv2d_loops(x, w, b, stride=1, padding=0, dilation=1):
    """out[n, co, oy, ox] = b[co] + sum_{c,i,j} w[co, c, i, j] * x_pad[n, c, oy*s + i*d, ...]."""
    n_img, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    h_out = output_size_formula(h, kh, stride, padding, dilation)
    w_out = output_size_formula(wd, kw, stride, padding, dilation)
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n_img, c_out, h_out, w_out))
    for n in range(n_img):
        for co in range(c_out):
            for oy in range(h_out):
                for ox in range(w_out):
                    total = b[co]
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                y = oy * stride + i * dilation
                                x_ = ox * stride + j * dilation
                                total += w[co, c, i, j] * x_pad[n, c, y, x_]
                    out[n, co, oy, ox] = total
    return out


# %% [markdown]
# Every output pixel reads a window of `C_in * KH * KW` input values and takes its dot product
# with one filter. The windows overlap (at stride 1 a pixel is read by up to `KH * KW` windows),
# and Python loops are slow. im2col reorganises the work so that NumPy's matrix product does it.
#
# ## im2col: the windows as columns
#
# im2col copies each window into one column of a matrix:
#
#     cols[n, (c, i, j), (oy, ox)] = x_pad[n, c, oy*s + i*d, ox*s + j*d]
#
# The rows are indexed by the tap `(c, i, j)`, flattened as `c*KH*KW + i*KW + j`; the columns
# by the output position `(oy, ox)`, flattened as `oy*W_out + ox`. So `cols` has shape
# `(N, C*KH*KW, H_out*W_out)`. skscratch's version, `im2col` in the module `skscratch.im2col`
# (beside its adjoint `col2im`, the subject of tutorial 5), does not loop over outputs at all:
# for each tap `(i, j)` it takes one strided slice of the padded input, which holds that tap of
# every window at once.

# %%
print(inspect.getsource(im2col))

# %% [markdown]
# A tiny example: one image, two channels of 3x3 holding the numbers 1..18 (so every entry of
# `cols` tells us where it came from), a 2x2 kernel, stride 1, no padding. Then
# `H_out = W_out = 2` and `cols` is `(1, 2*2*2, 2*2) = (1, 8, 4)`.

# %%
x_tiny = np.arange(1.0, 19.0).reshape(1, 2, 3, 3)  # (N, C, H, W) = (1, 2, 3, 3)
cols_tiny = im2col(x_tiny, 2, 2)
print(x_tiny.shape, "->", cols_tiny.shape)  # (1, 2, 3, 3) -> (1, 8, 4)
print("x channel 0:\n", x_tiny[0, 0], "\nx channel 1:\n", x_tiny[0, 1])

col_labels = [f"({oy},{ox})" for oy in range(2) for ox in range(2)]
row_labels = [f"({c},{i},{j})" for c in range(2) for i in range(2) for j in range(2)]
print("\nrow (c,i,j) | columns (oy,ox):", " ".join(f"{label:>6}" for label in col_labels))
for label, values in zip(row_labels, cols_tiny[0], strict=True):
    print(f"{label:>11} | {'':16}", " ".join(f"{v:6.0f}" for v in values))

# %% [markdown]
# Read it column by column: column `(0, 1)` is the window whose top-left corner is at row 0,
# column 1: `2, 3, 5, 6` from channel 0, then `11, 12, 14, 15` from channel 1. Read it row by
# row: row `(c, i, j)` is tap `(i, j)` of channel `c` for every window, for example row
# `(0, 0, 0)` holds the top-left pixel of each window, `1, 2, 4, 5`. Pixel 5 (the centre of
# channel 0) lies in all four windows, so it appears four times: `cols` is larger than `x`.
#
# The defining formula, checked entry by entry:

# %%
for c in range(2):
    for i in range(2):
        for j in range(2):
            for oy in range(2):
                for ox in range(2):
                    row, col = c * 4 + i * 2 + j, oy * 2 + ox
                    assert cols_tiny[0, row, col] == x_tiny[0, c, oy + i, ox + j]
assert np.array_equal(cols_tiny[0, :, 1], [2, 3, 5, 6, 11, 12, 14, 15])  # window (0, 1)
assert np.count_nonzero(cols_tiny == 5) == 4  # the centre pixel, in every window

# %% [markdown]
# The same picture: window `(0, 1)` outlined in both channels, and the column it becomes.

# %%
plt = pyplot()
fig, axes = plt.subplots(1, 3, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 3, 3]})
for c in range(2):
    ax = axes[c]
    ax.imshow(x_tiny[0, c], cmap="Blues", vmin=0, vmax=25)
    for (r, q), v in np.ndenumerate(x_tiny[0, c]):
        ax.text(q, r, f"{v:.0f}", ha="center", va="center")
    ax.add_patch(plt.Rectangle((0.5, -0.5), 2, 2, fill=False, ec="red", lw=3))
    ax.set_title(f"x, channel {c}")
    ax.set_xlabel("width index")
    ax.set_ylabel("height index")
    ax.set_xticks(range(3))
    ax.set_yticks(range(3))
ax = axes[2]
ax.imshow(cols_tiny[0], cmap="Blues", vmin=0, vmax=25, aspect="auto")
for (r, q), v in np.ndenumerate(cols_tiny[0]):
    ax.text(q, r, f"{v:.0f}", ha="center", va="center")
ax.add_patch(plt.Rectangle((0.5, -0.5), 1, 8, fill=False, ec="red", lw=3))
ax.set_xticks(range(4), col_labels)
ax.set_yticks(range(8), row_labels)
ax.set_xlabel("column: output position (oy, ox)")
ax.set_ylabel("row: tap (c, i, j)")
ax.set_title("cols = im2col(x), shape (8, 4)")
fig.suptitle("red: the window of output (oy, ox) = (0, 1), and the column it becomes")
fig.tight_layout()
show(fig, "03_im2col_tiny")

# %% [markdown]
# ## Version 2: im2col and one matrix product
#
# Flatten each filter the same way the rows of `cols` are ordered, `(c, i, j)`:
# `W.reshape(C_out, -1)` is `(C_out, C_in*KH*KW)` and its row `co` is filter `co`. Then for each
# image
#
#     out[n] = W.reshape(C_out, -1) @ cols[n] + b[:, None]        (C_out, H_out*W_out)
#
# entry `(co, (oy, ox))` is the dot product of filter `co` with window `(oy, ox)`: exactly the
# sum in the loops. `np.matmul` broadcasts the weight over the batch axis. A last reshape gives
# `(N, C_out, H_out, W_out)`.

# %%
x = rng.standard_normal((2, 3, 7, 6))  # (N, C_in, H, W)
w = rng.standard_normal((4, 3, 3, 3))  # (C_out, C_in, KH, KW)
b = rng.standard_normal(4)  # (C_out,)
stride, padding, dilation = 2, 1, 1
h_out = output_size_formula(7, 3, stride, padding, dilation)  # (7 + 2 - 2 - 1)//2 + 1 = 4
w_out = output_size_formula(6, 3, stride, padding, dilation)  # (6 + 2 - 2 - 1)//2 + 1 = 3

cols = im2col(x, 3, 3, stride=stride, padding=padding, dilation=dilation)
print("cols  ", cols.shape)  # (N, C_in*KH*KW, H_out*W_out) = (2, 27, 12)
w_mat = w.reshape(4, -1)
print("w_mat ", w_mat.shape)  # (C_out, C_in*KH*KW) = (4, 27)
out_flat = w_mat @ cols + b[:, None]
print("out   ", out_flat.shape)  # (N, C_out, H_out*W_out) = (2, 4, 12)
out_im2col = out_flat.reshape(2, 4, h_out, w_out)
print("out   ", out_im2col.shape)  # (N, C_out, H_out, W_out) = (2, 4, 4, 3)
assert cols.shape == (2, 27, h_out * w_out) and out_im2col.shape == (2, 4, 4, 3)

# %% [markdown]
# ## All versions agree
#
# The loops, our im2col product, and `skscratch.conv2d_forward` (the same gather and product,
# batched over the groups of tutorial 4) must give the same numbers, up to the rounding of a
# different order of summation. We check a few settings, including dilation and padding
# together.

# %%
for stride, padding, dilation in [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2)]:
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    loops = conv2d_loops(x, w, b, **kwargs)
    cols = im2col(x, 3, 3, **kwargs)
    by_product = (w.reshape(4, -1) @ cols + b[:, None]).reshape(loops.shape)
    package, _ = conv2d_forward(x, w, b, **kwargs)
    np.testing.assert_allclose(by_product, loops, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(package, loops, rtol=1e-12, atol=1e-12)
    print(f"stride {stride}, padding {padding}, dilation {dilation}: out {loops.shape}, all agree")

# %% [markdown]
# ## The price: memory
#
# im2col trades memory for speed. At stride 1 with "same" padding every pixel of every channel
# is copied once per tap, so `cols` holds `KH*KW` times as many numbers as `x`: 9 times for a
# 3x3 kernel. For one 32x32 image with 64 channels that is 589,824 numbers instead of 65,536.
# A 1x1 convolution, on the other hand, needs no im2col at all: its `cols` is `x` reshaped.
#
# The `im2col` above is the one you read and, in the course, write. skscratch also has a fast
# backend, `skscratch.fast`, which a network runs when it is built with `backend="fast"`:
# compiled versions of the same operations, which the tests check against these. Its convolution
# builds no `cols` for 1x1 kernels, and convolves the SK unit's grouped 3x3 kernels "directly",
# without `cols` either (see the docstring of `skscratch.fast.conv`).

# %%
x_big = rng.standard_normal((1, 64, 32, 32)).astype(np.float32)
cols_big = im2col(x_big, 3, 3, padding=1)
print(x_big.shape, x_big.size, "->", cols_big.shape, cols_big.size)
assert cols_big.size == 9 * x_big.size == 589_824
assert np.array_equal(im2col(x_big, 1, 1), x_big.reshape(1, 64, 32 * 32))  # 1x1: x reshaped

# %% [markdown]
# **Summary.** A convolution is a dot product of each filter with each input window. im2col
# gathers the windows into the columns of `cols`, `(N, C_in*KH*KW, H_out*W_out)`, with rows
# ordered `(c, i, j)` like the flattened filters, so the whole convolution is
# `W.reshape(C_out, -1) @ cols`. Tutorial 4 adds groups and dilation; tutorial 5 runs this
# product backwards.
