# %% [markdown]
# # 5. Backward through a convolution
#
# Tutorial 3 wrote the forward pass as a gather and a matrix product,
#
#     cols = im2col(x)                       (N, C_in*KH*KW, L),  L = H_out*W_out
#     out[n] = W.reshape(C_out, -1) @ cols[n] + b[:, None]
#
# The backward pass runs this in reverse: the gradients of a matrix product are matrix products,
# and the gradient of the gather is **col2im**. This tutorial first makes precise what col2im is
# (the adjoint of im2col, not its inverse), then derives `dx`, `dw` and `db`, computes them by
# hand, and checks them against `skscratch.conv2d_backward` and against finite differences. At
# the end it compares all this with the fast backend, the compiled versions a network trains on.

# %%
import inspect

import numpy as np

from skscratch import conv2d_backward, conv2d_forward, fast
from skscratch.fast.im2col import _im2col
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error
from skscratch.im2col import col2im, im2col
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## col2im undoes im2col? No.
#
# `col2im(cols)` sends every entry of `cols` back to the input pixel it was copied from and
# **adds** it there. With overlapping windows (3x3, stride 1, padding 1) a pixel was copied into
# several columns, so it comes back several times: `col2im(im2col(x)) != x`.

# %%
x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # (N, C, H, W) = (1, 1, 4, 4)
geometry = {"padding": 1}  # 3x3 kernel, stride 1
cols = im2col(x, 3, 3, **geometry)
print(cols.shape)  # (N, C*KH*KW, H_out*W_out) = (1, 9, 16)
back = col2im(cols, x.shape, 3, 3, **geometry)
print("x:\n", x[0, 0], "\ncol2im(im2col(x)):\n", back[0, 0])
assert not np.allclose(back, x)

# %% [markdown]
# Pixel `(y, x)` comes back once for every (window, tap) pair that read it, that is, multiplied
# by the number of windows covering it. Those counts are `col2im(im2col(ones))`: every copy of a
# 1 adds 1. In a 4x4 image with padding 1, a corner pixel is in 4 of the 16 windows, an edge
# pixel in 6, an inner pixel in 9 (every tap of a 3x3 window reads it once).

# %%
counts = col2im(im2col(np.ones_like(x), 3, 3, **geometry), x.shape, 3, 3, **geometry)
print("windows covering each pixel:\n", counts[0, 0])
expected_counts = [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
assert np.array_equal(counts[0, 0], expected_counts)
np.testing.assert_array_equal(back, x * counts)

# %% [markdown]
# When the windows do not overlap and tile the image (a 2x2 kernel with stride 2), every count
# is 1 and col2im does invert im2col. That is the exception, not the rule.

# %%
tiles = {"stride": 2}
np.testing.assert_array_equal(col2im(im2col(x, 2, 2, **tiles), x.shape, 2, 2, **tiles), x)

# %% [markdown]
# The counts for a few geometries on an 8x8 image. Every pixel is in 9 windows, except near the
# border, where some of its windows would be centred outside the image: a band 1 pixel wide for
# a 3x3 kernel, 2 pixels wide with dilation 2. With stride 2 the windows overlap only in every
# other row and column, so a pixel is in 1, 2 or 4 windows.

# %%
geometries = [  # (title, stride, padding, dilation)
    ("3x3, stride 1, padding 1", 1, 1, 1),
    ("3x3, dilation 2, padding 2", 1, 2, 2),
    ("3x3, stride 2, padding 1", 2, 1, 1),
]
ones = np.ones((1, 1, 8, 8))
plt = pyplot()
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
for ax, (title, s, p, d) in zip(axes, geometries, strict=True):
    window = {"stride": s, "padding": p, "dilation": d}
    cover = col2im(im2col(ones, 3, 3, **window), ones.shape, 3, 3, **window)[0, 0]
    ax.imshow(cover, cmap="viridis", vmin=0, vmax=9)
    for (r, q), v in np.ndenumerate(cover):
        ax.text(q, r, f"{v:.0f}", ha="center", va="center", color="w" if v < 6 else "k")
    ax.set_title(title)
    ax.set_xlabel("input column")
    ax.set_ylabel("input row")
    total = im2col(ones, 3, 3, **window).sum()  # every entry of cols is one copy of a pixel
    assert cover.sum() == total
    if s == 1:
        band = d  # border band of reduced counts
        assert np.all(cover[band:-band, band:-band] == 9)
        assert np.all(cover[:band] < 9) and np.all(cover[:, -band:] < 9)
    else:
        assert set(np.unique(cover)) == {1, 2, 4}
fig.suptitle("col2im(im2col(ones)): the number of windows that read each pixel")
fig.tight_layout()
show(fig, "05_window_counts")

# %% [markdown]
# ## The adjoint
#
# im2col is linear: `cols = A x` for a matrix `A` of zeros and ones (one row per entry of
# `cols`, holding a single 1 at the pixel it copies, or no 1 at all for padding). col2im is
# multiplication by its transpose, `A^T`: that is what "send back and add" means. Written
# without forming `A`, this is the adjoint identity
#
#     <im2col(x), c> = <x, col2im(c)>       for every x and every c of the shape of cols
#
# and `A^T A` is the diagonal matrix of the counts, which is why `col2im(im2col(x)) = counts * x`.
# First the identity on random arrays with stride, padding and dilation all on:

# %%
geometry = {"stride": 2, "padding": 2, "dilation": 2}
x = rng.standard_normal((2, 3, 7, 8))  # (N, C, H, W)
c = rng.standard_normal(im2col(x, 3, 3, **geometry).shape)  # (N, C*KH*KW, L) = (2, 27, 16)
lhs = np.sum(im2col(x, 3, 3, **geometry) * c)
rhs = np.sum(x * col2im(c, x.shape, 3, 3, **geometry))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
np.testing.assert_allclose(lhs, rhs, rtol=1e-12)

# %% [markdown]
# Then `A` itself, for the 4x4 example: its columns are im2col of the 16 unit images. Its
# transpose's columns are col2im of the 144 unit `cols`.

# %%
shape, geometry = (1, 1, 4, 4), {"padding": 1}
unit_images = np.eye(16).reshape(16, 1, 4, 4)  # 16 images, one pixel set in each
A = im2col(unit_images, 3, 3, **geometry).reshape(16, -1).T  # (144, 16): cols = A @ x.ravel()
unit_cols = np.eye(144).reshape(144, 1, 9, 16)
A_T = np.stack([col2im(u, shape, 3, 3, **geometry).ravel() for u in unit_cols], axis=1)
print(A.shape, A_T.shape)  # (144, 16) (16, 144)
np.testing.assert_array_equal(A_T, A.T)
np.testing.assert_array_equal(A.T @ A, np.diag(counts.ravel()))

# %% [markdown]
# ## Deriving the gradients
#
# Take a scalar loss `E` and its upstream gradient `dout = dE/dout`, shaped like `out`. For one
# image and one group, with `K = C_in/G * KH * KW` and `L = H_out * W_out`,
#
#     out[co, l] = sum_k W[co, k] * cols[k, l] + b[co]       W: (C_out/G, K), cols: (K, L)
#
# Differentiating this one line:
#
#     db[co]      = sum_{n, l} dout[n, co, l]
#     dW          = sum_n dout[n] @ cols[n].T                 (C_out/G, K)
#     dcols[n]    = W.T @ dout[n]                             (K, L)
#     dx          = col2im(dcols)                             (N, C_in, H, W)
#
# The first three are the rules for a matrix product (each weight multiplies one entry of `cols`
# in every column `l`, so its gradient sums over `l` and over images). The last is the adjoint:
# `cols = A x` gives `dx = A^T dcols`, and `A^T` is col2im. A pixel read by several windows
# collects the gradient of every one of them: that is the sum col2im performs.
#
# Now by hand, on a grouped, strided and dilated case, with `np.matmul` batching over images and
# groups.

# %%
n, c_in, c_out, groups = 2, 4, 6, 2
opts = {"stride": 2, "padding": 2, "dilation": 2, "groups": groups}
geometry = {k: v for k, v in opts.items() if k != "groups"}
x = rng.standard_normal((n, c_in, 7, 8))  # (N, C_in, H, W) = (2, 4, 7, 8)
w = rng.standard_normal((c_out, c_in // groups, 3, 3))  # (C_out, C_in/G, 3, 3) = (6, 2, 3, 3)
b = rng.standard_normal(c_out)
out, cache = conv2d_forward(x, w, b, **opts)
print("out ", out.shape)  # (N, C_out, H_out, W_out) = (2, 6, 4, 4)
dout = rng.standard_normal(out.shape)

k = c_in // groups * 9  # rows of cols per group: 2 * 3 * 3 = 18
length = out.shape[2] * out.shape[3]  # L = H_out*W_out = 16
cols = im2col(x, 3, 3, **geometry).reshape(n, groups, k, length)  # (N, G, K, L) = (2, 2, 18, 16)
w_g = w.reshape(groups, c_out // groups, k)  # (G, C_out/G, K) = (2, 3, 18)
dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L) = (2, 2, 3, 16)

db_hand = dout.sum(axis=(0, 2, 3))  # (C_out,)
dw_hand = (dout_g @ cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)  # (6, 2, 3, 3)
dcols = w_g.transpose(0, 2, 1) @ dout_g  # (N, G, K, L) = (2, 2, 18, 16)
dx_hand = col2im(dcols.reshape(n, c_in * 9, length), x.shape, 3, 3, **geometry)  # (2, 4, 7, 8)
print("cols", cols.shape, "dcols", dcols.shape, "dx", dx_hand.shape, "dw", dw_hand.shape)

# %% [markdown]
# The package's backward pass, `conv2d_backward`, computes these same products, and must give the
# same three arrays:

# %%
dx, dw, db = conv2d_backward(dout, cache)
np.testing.assert_allclose(dx, dx_hand, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(dw, dw_hand, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(db, db_hand, rtol=1e-10, atol=1e-12)
print("conv2d_backward: dx, dw, db equal the hand computation")

# %% [markdown]
# ## Checking against finite differences
#
# Our derivation could be wrong in a way that the package's code shares. An independent check:
# the loss `E(x) = sum(conv(x) * dout)` has gradient `dx`, and a centred difference
# `(E(x + h e_i) - E(x - h e_i)) / (2h)` estimates each entry with error `O(h^2)`. In float64
# with `h = 1e-6` the two should agree to far better than `1e-6` relative error (see the
# docstring of `skscratch.gradcheck` for why float32 cannot do this). Here they agree even
# better than that: E is linear in x, in w and in b (each alone), so its third derivative is
# zero and the centred difference has no truncation error at all; only rounding remains.


# %%
def conv_of(**changed):
    """The convolution's output as a function of one input, the others held fixed."""
    args = {"x": x, "w": w, "b": b} | changed
    return conv2d_forward(args["x"], args["w"], args["b"], **opts)[0]


dx_num = numerical_gradient(lambda v: conv_of(x=v), x, dout)
dw_num = numerical_gradient(lambda v: conv_of(w=v), w, dout)
db_num = numerical_gradient(lambda v: conv_of(b=v), b, dout)
for name, hand, num in [("dx", dx_hand, dx_num), ("dw", dw_hand, dw_num), ("db", db_hand, db_num)]:
    err = rel_error(hand, num)
    print(f"{name}: relative error {err:.1e}")
    assert err < 1e-6

# %% [markdown]
# `check_gradients` packages the same test for any forward/backward pair: it draws its own
# random `dout`, runs the backward pass, and returns the largest relative error per input.

# %%
errors = check_gradients(conv2d_forward, conv2d_backward, {"x": x, "w": w, "b": b}, fixed=opts)
print({name: f"{err:.1e}" for name, err in errors.items()})
assert set(errors) == {"x", "w", "b"} and max(errors.values()) < 1e-6

# %% [markdown]
# ## The fast backend computes the same
#
# Everything above is skscratch's reference path: the plain-NumPy functions that you read and,
# in the course, write, and that `python -m skscratch gradcheck` checks. A network built with
# `backend="fast"` runs compiled versions of them instead, from the package `skscratch.fast`,
# with the same arguments and results. Its `im2col` and `col2im` are numba kernels that do not
# pad the input: for each tap they work out the range of output positions whose input pixel
# lies inside the image, and zero the rest, one (image, channel) plane per parallel iteration.
# Here is the gather:

# %%
print(inspect.getsource(_im2col))

# %% [markdown]
# A different algorithm, so it must be checked against the reference. im2col only copies
# numbers, so the two must be *identical*; col2im adds, in a different order, so they agree up to
# rounding. Several geometries, including a non-square kernel with different settings along the
# two axes, and both float dtypes:

# %%
cases = [  # (KH, KW, stride, padding, dilation)
    (3, 3, 1, 1, 1),
    (3, 3, 2, 1, 1),
    (3, 3, 1, 2, 2),
    (3, 3, 2, 2, 2),
    (5, 5, 1, 0, 1),
    (2, 2, 2, 0, 1),
    (1, 3, (1, 2), (0, 1), (1, 2)),
]
for dtype in [np.float64, np.float32]:
    x_case = rng.standard_normal((2, 3, 9, 10)).astype(dtype)
    for kh, kw, s, p, d in cases:
        kw_args = {"stride": s, "padding": p, "dilation": d}
        compiled = fast.im2col.im2col(x_case, kh, kw, **kw_args)
        ours = im2col(x_case, kh, kw, **kw_args)
        assert compiled.dtype == ours.dtype == dtype
        np.testing.assert_array_equal(compiled, ours)
        c = rng.standard_normal(ours.shape).astype(dtype)
        back_compiled = fast.im2col.col2im(c, x_case.shape, kh, kw, **kw_args)
        back_ours = col2im(c, x_case.shape, kh, kw, **kw_args)
        assert back_compiled.dtype == dtype
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(back_compiled, back_ours, rtol=tol, atol=tol)
print(f"fast.im2col.im2col == im2col and fast.im2col.col2im ~ col2im in {2 * len(cases)} cases")

# %% [markdown]
# The fast backend's convolution has two algorithms: `"im2col"`, the products of this tutorial
# with the compiled gather and scatter, and `"direct"`, kernels that convolve without `cols` at
# all (for the SK unit's grouped 3x3 convolutions, whose few channels per group make `cols` cost
# more than the arithmetic; see the docstring of `skscratch.fast.conv`). By default it picks
# one per convolution. Both must give the gradients computed by hand above, on the grouped,
# strided and dilated example:

# %%
for algorithm in ["im2col", "direct"]:
    _, fast_cache = fast.conv2d_forward(x, w, b, **opts, algorithm=algorithm)
    dx, dw, db = fast.conv2d_backward(dout, fast_cache)
    np.testing.assert_allclose(dx, dx_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, dw_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, db_hand, rtol=1e-10, atol=1e-12)
    print(f"fast.conv2d_backward, algorithm={algorithm!r}: dx, dw, db equal the hand computation")

# %% [markdown]
# **Summary.** The backward pass of `out = W @ cols + b` is three matrix-product rules and one
# adjoint: `db` sums `dout`, `dW = dout @ cols.T`, `dcols = W.T @ dout`, and `dx = col2im(dcols)`.
# col2im is the transpose of im2col, not its inverse: it adds up the gradient of every window
# that read a pixel, and `col2im(im2col(x))` is `x` times the number of such windows. Groups only
# add a batch axis to the products. Every branch of the SK unit is such a convolution, and its
# backward pass is exactly this one; the fast backend computes the same numbers by compiled
# kernels.
