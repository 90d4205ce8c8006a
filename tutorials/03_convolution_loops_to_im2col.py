# %% [markdown]
# # 3. Convolution: from nested loops to im2col
#
# **Goals.** After this tutorial you can
# - compute a convolution's output size from its kernel, stride, padding and dilation, and
#   choose the padding that keeps the size;
# - write a convolution as nested loops, straight from its definition;
# - gather the input windows into a matrix with im2col, and say which row and column of it
#   holds which tap of which window;
# - compute the whole convolution as one matrix product of the flattened filters with that
#   matrix, and say what it costs in memory.
#
# **Prerequisites.** Tutorials 1 and 2 (a layer as a forward function; the fully connected
# layer as a matrix product); NumPy slicing with a step, and reshapes.
#
# **Time.** About 45 minutes, more if you write the assignment exercise `im2col`.
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
# $$ \mathrm{out}_{n, c_o, o_y, o_x} = b_{c_o} + \sum_{c, i, j} w_{c_o, c, i, j}\;
#    x^{\mathrm{pad}}_{n,\, c,\, o_y s + i d,\, o_x s + j d} $$
#
# where $x^{\mathrm{pad}}$ is `x` with $p$ (`padding`) zeros on every side, $s$ is the stride
# and $d$ the dilation.

# %%
import math

import numpy as np

from skscratch import conv2d_forward, conv_output_size
from skscratch.assignment.student import check
from skscratch.im2col import im2col
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## The output size
#
# Along one axis the padded input has $H + 2p$ pixels. A kernel of $K_H$ taps spaced $d$
# apart spans $d(K_H - 1) + 1$ pixels. Its first position starts at 0, the next ones every $s$
# pixels, and the last one must still end inside the padded input:
#
# $$ H_\mathrm{out} = \left\lfloor \frac{H + 2p - d(K_H - 1) - 1}{s} \right\rfloor + 1 $$
#
# The floor division drops the last few rows when the stride does not divide the remaining
# length evenly: those rows are never read.
#
# We check the formula for several settings against a direct count of the window positions and
# against `skscratch.conv_output_size`, and, once we have the convolution itself (below),
# against the shape `conv2d_forward` actually returns. The width gets the same settings on a
# different input size, so both axes are exercised.


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
    h_out, w_out = output_size_formula(h, k, s, p, d), output_size_formula(h + 3, k, s, p, d)
    assert h_out == count_window_positions(h, k, s, p, d) == conv_output_size(h, k, s, p, d)
    assert w_out == count_window_positions(h + 3, k, s, p, d)
    print(f"{h:2d} {k:2d} {s:2d} {p:2d} {d:2d} | {h_out:5d}  {w_out:5d}")

# %% [markdown]
# Note the second row: a 3x3 kernel with dilation 2 spans 5 pixels, so padding 2 keeps the size
# (32 -> 32). In general $p = d(K - 1)/2$ keeps the size at stride 1, which is why the SK unit
# pads each branch by its dilation.
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
# Every output pixel reads a window of $C_\mathrm{in} K_H K_W$ input values and takes its dot
# product with one filter. The windows overlap (at stride 1 a pixel is read by up to $K_H K_W$
# windows), and Python loops are slow. im2col reorganises the work so that NumPy's matrix
# product does it.
#
# ## im2col: the windows as columns
#
# im2col copies each window into one column of a matrix:
#
# $$ \mathrm{cols}_{n,\, (c, i, j),\, (o_y, o_x)} =
#    x^{\mathrm{pad}}_{n,\, c,\, o_y s + i d,\, o_x s + j d} $$
#
# The rows are indexed by the tap $(c, i, j)$, flattened as $c K_H K_W + i K_W + j$; the
# columns by the output position $(o_y, o_x)$, flattened as $o_y W_\mathrm{out} + o_x$. So
# `cols` has shape `(N, C*KH*KW, H_out*W_out)`. skscratch's version, `im2col` in the module
# `skscratch.im2col` (beside its adjoint `col2im`, the subject of tutorial 5), does not loop
# over outputs at all: for each tap $(i, j)$ it takes one strided slice of the padded input,
# which holds that tap of every window at once.
#
# ### Your turn: `im2col` (assignment exercise `im2col`)
#
# In a student copy (`python -m skscratch assignment make`), the body of `im2col` in
# `skscratch/im2col.py` is yours to write, from the formula above. Watch the order of the rows,
# $(c, i, j)$, which the flattened filters will have to match, and take exactly
# $H_\mathrm{out} \times W_\mathrm{out}$ positions per tap. The exercise's checks also cover
# `col2im`, the adjoint that tutorial 5 derives, and fail until you have written it as well: it
# sends every entry of `cols` back to the pixel it was copied from and adds it there. The cell
# below runs the exercise's visible checks on both; the rest of the chapter uses your function.

# %%
assert check("im2col") == 0, "exercise im2col: see the failures above"

# %% [markdown]
# A tiny example: one image, two channels of 3x3 holding the numbers 1..18 (so every entry of
# `cols` tells us where it came from), a 2x2 kernel, stride 1, no padding. Then
# $H_\mathrm{out} = W_\mathrm{out} = 2$ and `cols` is `(1, 2*2*2, 2*2) = (1, 8, 4)`.

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
# Flatten each filter the same way the rows of `cols` are ordered, $(c, i, j)$:
# $W_\mathrm{mat}$ = `W.reshape(C_out, -1)` is `(C_out, C_in*KH*KW)` and its row $c_o$ is
# filter $c_o$. Then for each image
#
# $$ \mathrm{out}_n = W_\mathrm{mat}\, \mathrm{cols}_n + b\,\mathbf{1}^\top
#    \qquad (C_\mathrm{out} \times H_\mathrm{out} W_\mathrm{out}) $$
#
# (in NumPy, `w_mat @ cols[n] + b[:, None]`): entry $(c_o, (o_y, o_x))$ is the dot product of
# filter $c_o$ with window $(o_y, o_x)$, exactly the sum in the loops. `np.matmul` broadcasts
# the weight over the batch axis. A last reshape gives `(N, C_out, H_out, W_out)`.

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
# `conv2d_forward` is this product, done per group (tutorial 4 explains groups; with one group
# it is exactly the product above). It is the forward half of the assignment exercise `conv`:
# in a student copy its body in `skscratch/conv.py` is yours to write, and the rest of this
# chapter and tutorial 4 run on it. Tutorial 5 derives the backward half, `conv2d_backward`,
# and there a "Your turn" cell runs the exercise's checks on both.
#
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
# And the output sizes of the table at the start are the shapes `conv2d_forward` returns:

# %%
for h, k, s, p, d in settings:
    out, _ = conv2d_forward(np.zeros((1, 1, h, h + 3)), np.zeros((1, 1, k, k)),
                            stride=s, padding=p, dilation=d)  # fmt: skip
    assert out.shape == (1, 1, output_size_formula(h, k, s, p, d),
                         output_size_formula(h + 3, k, s, p, d))  # fmt: skip
print(f"conv2d_forward's output shapes match the formula in all {len(settings)} settings")

# %% [markdown]
# ## The price: memory
#
# im2col trades memory for speed. At stride 1 with "same" padding every pixel of every channel
# is copied once per tap, so `cols` holds $K_H K_W$ times as many numbers as `x`: 9 times for a
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
# ## Summary
#
# - The output size is
#   $H_\mathrm{out} = \lfloor (H + 2p - d(K_H - 1) - 1) / s \rfloor + 1$, checked against a
#   count of the window positions, `conv_output_size` and `conv2d_forward` in 8 settings;
#   $p = d(K - 1)/2$ keeps the size at stride 1 (32 -> 32 for the SK unit's dilated branch).
# - A convolution is a dot product of each filter with each input window; the loop version is
#   that definition transcribed.
# - im2col gathers the windows into the columns of `cols`, `(N, C_in*KH*KW, H_out*W_out)`, with
#   rows ordered $(c, i, j)$ like the flattened filters: in the tiny example column $(0, 1)$ is
#   `2, 3, 5, 6, 11, 12, 14, 15`, and the centre pixel 5 is copied 4 times.
# - The whole convolution is `W.reshape(C_out, -1) @ cols + b`: loops, product and
#   `conv2d_forward` agree to 1e-12 in 5 settings of stride, padding and dilation.
# - The price is memory: 9 times `x` for a 3x3 kernel at stride 1 (589,824 numbers instead of
#   65,536 for a 64-channel 32x32 image); a 1x1 convolution's `cols` is `x` reshaped.
#
# Tutorial 4 adds groups and dilation; tutorial 5 runs this product backwards.
#
# ## Exercises
#
# 1. A 17x17 input, a 3x3 kernel with dilation 3, stride 2 and padding 1: what is
#    $H_\mathrm{out}$? Work it out from the formula.

# %%
# BEGIN SOLUTION
h_out_ex = (17 + 2 * 1 - 3 * (3 - 1) - 1) // 2 + 1
# END SOLUTION
assert h_out_ex == count_window_positions(17, 3, 2, 1, 3) == conv_output_size(17, 3, 2, 1, 3)

# %% [markdown]
# 2. What padding keeps a 32x32 input at 32x32 through a 5x5 kernel with dilation 3 at
#    stride 1?

# %%
# BEGIN SOLUTION
pad_same = 3 * (5 - 1) // 2
# END SOLUTION
assert count_window_positions(32, 5, 1, pad_same, 3) == 32

# %% [markdown]
# 3. How many numbers does `im2col` return for a batch of 8 images with 16 channels of 32x32,
#    a 3x3 kernel, stride 2 and padding 1? How many times the size of the input is that, and
#    why not 9?

# %%
# BEGIN SOLUTION
h_out_s2 = (32 + 2 - 2 - 1) // 2 + 1  # 16: stride 2 halves the output on each axis
cols_size = 8 * (16 * 3 * 3) * (h_out_s2 * h_out_s2)
times_x = 9 / 2**2  # 9 taps per window, but a quarter as many windows
# END SOLUTION
assert cols_size == im2col(np.zeros((8, 16, 32, 32), np.float32), 3, 3, stride=2, padding=1).size
assert math.isclose(times_x, cols_size / (8 * 16 * 32 * 32))

# %% [markdown]
# 4. An input with 3 channels of 5x7 and a 3x3 kernel (stride 1, no padding), so
#    $W_\mathrm{out} = 5$. Which row of `cols[n]` holds tap $(c, i, j) = (2, 1, 0)$, and which
#    column holds the window of output $(o_y, o_x) = (2, 3)$?

# %%
# BEGIN SOLUTION
tap_row = 2 * 3 * 3 + 1 * 3 + 0
window_col = 2 * 5 + 3
# END SOLUTION
x_labelled = np.arange(3 * 5 * 7.0).reshape(1, 3, 5, 7)  # every pixel a different number
assert im2col(x_labelled, 3, 3)[0, tap_row, window_col] == x_labelled[0, 2, 2 + 1, 3 + 0]
assert np.unravel_index(tap_row, (3, 3, 3)) == (2, 1, 0)
assert np.unravel_index(window_col, (3, 5)) == (2, 3)
