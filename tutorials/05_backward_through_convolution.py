# %% [markdown]
# # 5. Backward through a convolution
#
# **Goals.** After this tutorial you can
# - say why col2im is the adjoint (the transpose) of im2col and not its inverse, and predict
#   `col2im(im2col(x))` from the number of windows that read each pixel;
# - derive the gradients `dx`, `dw` and `db` of a grouped, strided, dilated convolution from the
#   rules for a matrix product and that adjoint;
# - check a convolution's backward pass against finite differences.
#
# **Prerequisites.** Tutorial 1 (vector-Jacobian products, finite differences), tutorial 3
# (im2col, the convolution as a matrix product) and tutorial 4 (groups); the transpose of a
# matrix.
#
# **Time.** About 45 minutes, more if you write the assignment exercises `im2col` (its `col2im`)
# and `conv`.
#
# Tutorial 3 wrote the forward pass as a gather and a matrix product,
#
# $$ \mathrm{cols} = \mathrm{im2col}(x) \quad (N,\; C_\mathrm{in} K_H K_W,\; L), \qquad
#    L = H_\mathrm{out} W_\mathrm{out}, \qquad
#    \mathrm{out}_n = W_\mathrm{mat}\, \mathrm{cols}_n + b\,\mathbf{1}^\top $$
#
# with $W_\mathrm{mat}$ = `W.reshape(C_out, -1)`. The backward pass runs this in reverse: the
# gradients of a matrix product are matrix products, and the gradient of the gather is
# **col2im**. This tutorial first makes precise what col2im is (the adjoint of im2col, not its
# inverse), then derives `dx`, `dw` and `db`, and checks `skscratch.conv2d_backward`, which
# computes them, against finite differences. At the end it compares all this with the fast
# backend, the compiled versions a network trains on.

# %%
import inspect

import numpy as np

from skscratch import conv2d_backward, conv2d_forward, fast
from skscratch.assignment.student import check
from skscratch.fast._rows import _valid_range
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
#
# ### Your turn: `col2im` (assignment exercise `im2col`)
#
# In a student copy (`python -m skscratch assignment make`), the body of `col2im` in
# `skscratch/im2col.py` is yours to write, from the description above. With the `im2col` of
# tutorial 3 it makes up the exercise `im2col`, whose checks cover both: if you wrote `col2im`
# to pass them there, this cell passes again. Every tap's slice of `cols` goes back to the
# pixels im2col read it from; where windows overlap, add (`+=`), never assign, and drop what
# lands in the padding. The cell below runs the exercise's visible checks; the rest of the
# chapter uses your function.

# %%
assert check("im2col") == 0, "exercise im2col: see the failures above"

# %% [markdown]
# Now the example: a 4x4 image, a 3x3 kernel, stride 1, padding 1.

# %%
x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # (N, C, H, W) = (1, 1, 4, 4)
geometry = {"padding": 1}  # 3x3 kernel, stride 1
cols = im2col(x, 3, 3, **geometry)
print(cols.shape)  # (N, C*KH*KW, H_out*W_out) = (1, 9, 16)
back = col2im(cols, x.shape, 3, 3, **geometry)
print("x:\n", x[0, 0], "\ncol2im(im2col(x)):\n", back[0, 0])
assert not np.allclose(back, x)

# %% [markdown]
# Pixel $(y, x)$ comes back once for every (window, tap) pair that read it, that is, multiplied
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
# im2col is linear: $\mathrm{cols} = A x$ for a matrix $A$ of zeros and ones (one row per entry
# of `cols`, holding a single 1 at the pixel it copies, or no 1 at all for padding). col2im is
# multiplication by its transpose, $A^\top$: that is what "send back and add" means. Written
# without forming $A$, this is the adjoint identity
#
# $$ \langle \mathrm{im2col}(x),\, c \rangle = \langle x,\, \mathrm{col2im}(c) \rangle
#    \qquad \text{for every } x \text{ and every } c \text{ of the shape of cols,} $$
#
# and $A^\top A$ is the diagonal matrix of the counts, which is why
# $\mathrm{col2im}(\mathrm{im2col}(x)) = \mathrm{counts} \odot x$. First the identity on
# random arrays with stride, padding and dilation all on:

# %%
geometry = {"stride": 2, "padding": 2, "dilation": 2}
x = rng.standard_normal((2, 3, 7, 8))  # (N, C, H, W)
c = rng.standard_normal(im2col(x, 3, 3, **geometry).shape)  # (N, C*KH*KW, L) = (2, 27, 16)
lhs = np.sum(im2col(x, 3, 3, **geometry) * c)
rhs = np.sum(x * col2im(c, x.shape, 3, 3, **geometry))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
np.testing.assert_allclose(lhs, rhs, rtol=1e-12)

# %% [markdown]
# Then $A$ itself, for the 4x4 example: its columns are im2col of the 16 unit images. Its
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
# Take a scalar loss $E$ and its upstream gradient $\delta = \partial E / \partial\,
# \mathrm{out}$ (`dout`), shaped like `out`. For one image and one group, with
# $K = (C_\mathrm{in}/G) K_H K_W$ and $L = H_\mathrm{out} W_\mathrm{out}$,
#
# $$ \mathrm{out}_{c_o l} = \sum_k W_{c_o k}\, \mathrm{cols}_{k l} + b_{c_o}, \qquad
#    W: (C_\mathrm{out}/G) \times K, \quad \mathrm{cols}: K \times L. $$
#
# Differentiating this one line:
#
# $$ \frac{\partial E}{\partial b_{c_o}} = \sum_{n, l} \delta_{n c_o l}, \qquad
#    \frac{\partial E}{\partial W} = \sum_n \delta_n\, \mathrm{cols}_n^\top
#    \quad (C_\mathrm{out}/G \times K), $$
#
# $$ \frac{\partial E}{\partial\, \mathrm{cols}_n} = W^\top \delta_n \quad (K \times L),
#    \qquad \frac{\partial E}{\partial x} =
#    \mathrm{col2im}\Big(\frac{\partial E}{\partial\, \mathrm{cols}}\Big)
#    \quad (N, C_\mathrm{in}, H, W). $$
#
# The first three are the rules for a matrix product (each weight multiplies one entry of `cols`
# in every column $l$, so its gradient sums over $l$ and over images). The last is the adjoint:
# $\mathrm{cols} = A x$ gives $\partial E / \partial x = A^\top\, \partial E / \partial\,
# \mathrm{cols}$, and $A^\top$ is col2im. A pixel read by several windows collects the gradient
# of every one of them: that is the sum col2im performs.
#
# ### Your turn: `conv2d_backward` (assignment exercise `conv`)
#
# In a student copy, the bodies of `conv2d_backward` and of `conv2d_forward` (tutorial 3) in
# `skscratch/conv.py` are yours to write, from the formulas above; together they are the
# exercise `conv`. Reshape `dout` to `(N, G, C_out/G, L)` and the weight to `(G, C_out/G, K)`,
# so that `np.matmul` batches over images and groups, and remember that $\partial E/\partial W$
# sums over the images; with `input_grad=False` return `None` for `dx` without computing it. The
# cell below runs the exercise's visible checks, forward and backward; the rest of the chapter
# uses your functions.

# %%
assert check("conv") == 0, "exercise conv: see the failures above"

# %% [markdown]
# A grouped, strided and dilated case, to carry through the rest of the chapter:

# %%
n, c_in, c_out, groups = 2, 4, 6, 2
opts = {"stride": 2, "padding": 2, "dilation": 2, "groups": groups}
x = rng.standard_normal((n, c_in, 7, 8))  # (N, C_in, H, W) = (2, 4, 7, 8)
w = rng.standard_normal((c_out, c_in // groups, 3, 3))  # (C_out, C_in/G, 3, 3) = (6, 2, 3, 3)
b = rng.standard_normal(c_out)
out, cache = conv2d_forward(x, w, b, **opts)
print("out ", out.shape)  # (N, C_out, H_out, W_out) = (2, 6, 4, 4)
dout = rng.standard_normal(out.shape)
dx, dw, db = conv2d_backward(dout, cache)
print("dx", dx.shape, "dw", dw.shape, "db", db.shape)  # (2, 4, 7, 8) (6, 2, 3, 3) (6,)
assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)), rtol=1e-12)

# %% [markdown]
# ## Checking against finite differences
#
# Our derivation could be wrong in a way that the code shares. An independent check: the loss
# $E(x) = \sum \mathrm{conv}(x) \odot \delta$ has gradient $\partial E / \partial x$, and a
# centred difference $(E(x + h e_i) - E(x - h e_i)) / 2h$ estimates each entry with error
# $O(h^2)$. In float64 with $h = 10^{-6}$ the two should agree to far better than $10^{-6}$
# relative error (see the docstring of `skscratch.gradcheck` for why float32 cannot do this).
# Here they agree even better than that: $E$ is linear in $x$, in $w$ and in $b$ (each alone),
# so its third derivative is zero and the centred difference has no truncation error at all;
# only rounding remains.


# %%
def conv_of(**changed):
    """The convolution's output as a function of one input, the others held fixed."""
    args = {"x": x, "w": w, "b": b} | changed
    return conv2d_forward(args["x"], args["w"], args["b"], **opts)[0]


dx_num = numerical_gradient(lambda v: conv_of(x=v), x, dout)
dw_num = numerical_gradient(lambda v: conv_of(w=v), w, dout)
db_num = numerical_gradient(lambda v: conv_of(b=v), b, dout)
for name, analytic, num in [("dx", dx, dx_num), ("dw", dw, dw_num), ("db", db, db_num)]:
    err = rel_error(analytic, num)
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
#
# That range is the one piece of arithmetic the padded slices of the reference path never
# need. For tap $i$, output row $o$ reads input row $o s + i d - p$, which lies inside the image,
# $0 \le o s + i d - p < H$, for $o$ in a range $[\mathrm{lo}, \mathrm{hi})$. The kernels share
# a small helper for it:

# %%
print(inspect.getsource(_valid_range))

# %% [markdown]
# Its ranges, for a 7x7 input, a 3x3 kernel with stride 2, padding 2 and dilation 2
# ($H_\mathrm{out} = 4$), checked against the reference: in `im2col` of an image of ones, tap
# $(i, j)$ of window $(o_y, o_x)$ is 1 where the pixel lies inside the image and 0 where it is
# padding.

# %%
h_in, h_out_7 = 7, 4
cols_ones = im2col(np.ones((1, 1, h_in, h_in)), 3, 3, stride=2, padding=2, dilation=2)
cols_ones = cols_ones.reshape(3, 3, h_out_7, h_out_7)  # (i, j, oy, ox)
inside = np.zeros((3, h_out_7), dtype=bool)  # inside[i, o]: tap i of output o reads the image
for i in range(3):
    lo, hi = _valid_range(i * 2 - 2, 2, h_in, h_out_7)  # offset i*d - p, stride, H, H_out
    inside[i, lo:hi] = True
    print(f"tap {i}: input row 2*o{i * 2 - 2:+d} is inside the image for o in [{lo}, {hi})")
for i in range(3):
    for j in range(3):
        assert np.array_equal(cols_ones[i, j] == 1, np.outer(inside[i], inside[j]))
assert inside.sum() == 3 + 4 + 3  # the first and last taps lose one output row to the padding

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
# one per convolution. Both must give the gradients of `conv2d_backward` above (checked against
# finite differences), on the grouped, strided and dilated example:

# %%
for algorithm in ["im2col", "direct"]:
    _, fast_cache = fast.conv2d_forward(x, w, b, **opts, algorithm=algorithm)
    dx_fast, dw_fast, db_fast = fast.conv2d_backward(dout, fast_cache)
    np.testing.assert_allclose(dx_fast, dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw_fast, dw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db_fast, db, rtol=1e-10, atol=1e-12)
    print(f"fast.conv2d_backward, algorithm={algorithm!r}: dx, dw, db equal conv2d_backward's")

# %% [markdown]
# ## Summary
#
# - col2im sends every entry of `cols` back to its pixel and adds: it is the transpose of
#   im2col, not its inverse. `col2im(im2col(x))` is `x` times the number of windows that read
#   each pixel (4, 6 and 9 for the corner, edge and inner pixels of a 4x4 image with a padded
#   3x3 kernel), and equals `x` only when the windows tile the image (2x2, stride 2).
# - The adjoint identity $\langle \mathrm{im2col}(x), c \rangle = \langle x,
#   \mathrm{col2im}(c) \rangle$ holds to 1e-12, and the matrix $A$ of im2col, built from unit
#   images (144 x 16), has col2im as its transpose and $A^\top A$ = diag(counts).
# - The backward pass of $\mathrm{out} = W \mathrm{cols} + b$ is three matrix-product rules and
#   one adjoint: $\partial E/\partial b$ sums $\delta$, $\partial E/\partial W = \delta\,
#   \mathrm{cols}^\top$, $\partial E/\partial\, \mathrm{cols} = W^\top \delta$ and
#   $\partial E/\partial x = \mathrm{col2im}(\partial E/\partial\, \mathrm{cols})$; groups
#   only add a batch axis to the products.
# - On a grouped, strided and dilated case, `conv2d_backward` agrees with finite differences to
#   better than 1e-6 (the loss is linear in each input, so only rounding remains), and so do the
#   fast backend's im2col and direct algorithms with it to 1e-10.
#
# Every branch of the SK unit is such a convolution, and its backward pass is exactly this one.
#
# ## Exercises
#
# 1. A 5x5 image, a 3x3 kernel with dilation 2 and padding 2, stride 1. How many windows read
#    each pixel? Work out the count along one axis for the 5 positions, then the 5x5 array.

# %%
# BEGIN SOLUTION
along_axis = np.array([2, 2, 3, 2, 2])  # row y is read by outputs y + 2, y, y - 2 within 0..4
counts_5x5 = np.outer(along_axis, along_axis)
# END SOLUTION
geometry_5 = {"padding": 2, "dilation": 2}
ones_5 = np.ones((1, 1, 5, 5))
assert np.array_equal(col2im(im2col(ones_5, 3, 3, **geometry_5), ones_5.shape, 3, 3,
                             **geometry_5)[0, 0], counts_5x5)  # fmt: skip

# %% [markdown]
# 2. For the 4x4 image with a 3x3 kernel and padding 1 of the start of this tutorial, `cols`
#    has 144 entries. How many of them are padding zeros, copied from no pixel at all?

# %%
# BEGIN SOLUTION
padding_entries = 144 - (4 * 4 + 8 * 6 + 4 * 9)  # minus the copies: corners, edges, inner
# END SOLUTION
assert np.count_nonzero(im2col(np.ones((1, 1, 4, 4)), 3, 3, padding=1) == 0) == padding_entries

# %% [markdown]
# 3. A 1x1 convolution without padding needs no im2col: `cols` is `x` reshaped to
#    `(N, C_in, H*W)`. Write $\partial E / \partial W$ for it with one `np.einsum` (or a
#    reshape and a matrix product), shaped like the weight `(C_out, C_in, 1, 1)`.

# %%
x_1x1 = rng.standard_normal((2, 3, 4, 4))
w_1x1 = rng.standard_normal((5, 3, 1, 1))
dout_1x1 = rng.standard_normal((2, 5, 4, 4))
# BEGIN SOLUTION
dw_1x1 = np.einsum("nohw,nchw->oc", dout_1x1, x_1x1).reshape(5, 3, 1, 1)
# END SOLUTION
numeric = numerical_gradient(lambda v: conv2d_forward(x_1x1, v)[0], w_1x1, dout_1x1)
assert rel_error(dw_1x1, numeric) < 1e-8

# %% [markdown]
# 4. A 2x2 kernel with stride 3 and no padding on a 7x7 image: the windows skip some pixels.
#    How many pixels of `dx` are exactly zero, whatever the weights and `dout`?

# %%
# BEGIN SOLUTION
never_read = 7 * 7 - 4 * 4  # windows start at 0 and 3: rows and columns 0, 1, 3, 4 are read
# END SOLUTION
x_s3 = rng.standard_normal((1, 2, 7, 7))
out_s3, cache_s3 = conv2d_forward(x_s3, rng.standard_normal((3, 2, 2, 2)), stride=3)
dx_s3 = conv2d_backward(rng.standard_normal(out_s3.shape), cache_s3)[0]
assert np.count_nonzero(dx_s3[0, 0] == 0) == np.count_nonzero(dx_s3[0, 1] == 0) == never_read
