# %% [markdown]
# # 7. Gradient checking as a tool
#
# **Goals.** After this tutorial you can
# - check any backward pass against centred finite differences, weighted by a random upstream
#   gradient;
# - explain why centred differences beat one-sided ones ($O(h^2)$ against $O(h)$), and predict
#   the best step size from the balance of truncation and rounding;
# - say why gradients are checked in float64, and when the complex step does better still;
# - measure the error so that entries near zero do not mislead, and keep inputs away from kinks;
# - plant a bug and see the check catch it.
#
# **Prerequisites.** Tutorial 1 (vector-Jacobian products); tutorials 3 to 6 (the convolution,
# its backward pass and batch norm, the operations checked here); Taylor series.
#
# **Time.** About 45 minutes.
#
# Every backward pass in skscratch is written by hand, so every one can be wrong. The check
# that catches the mistakes compares it with finite differences of the forward pass. This
# tutorial looks at the checker itself: which difference to take, which step size, which
# floating-point type, how to measure the error, where it lies (ReLU's kink), and finally a
# gallery of planted bugs it catches.
#
# The idea: for an operation $\text{out} = f(x)$ and an upstream gradient $g$ (`dout`) of
# out's shape, the scalar
#
# $$ L(x) = \sum_i f(x)_i \, g_i $$
#
# has gradient $\partial L / \partial x = $ `backward(dout)`. Finite differences of $L$
# approximate that gradient one entry at a time.

# %%
import inspect
import math

import numpy as np

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    branch_softmax_backward,
    branch_softmax_forward,
    conv2d_backward,
    conv2d_forward,
    relu_backward,
    relu_forward,
)
from skscratch.assignment.student import check
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error
from skscratch.im2col import col2im, im2col
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)
print(inspect.getsource(numerical_gradient))

# %% [markdown]
# ## A real operation to check
#
# Throughout we use a small convolution followed by batch norm (training mode), as in an SK
# branch: `x` (2, 2, 5, 5) -> conv 3x3, padding 1 -> (2, 3, 5, 5) -> batch norm. The analytic
# gradient is the two backward passes chained, in reverse order.

# %%
x = rng.normal(size=(2, 2, 5, 5))  # (N, C_in, H, W)
w = 0.5 * rng.normal(size=(3, 2, 3, 3))  # (C_out, C_in, KH, KW)


def conv_bn(x):
    """conv 3x3 (padding 1) then batch norm, computed in x's dtype: (N, 3, 5, 5)."""
    dtype = x.dtype
    out, _ = conv2d_forward(x, w.astype(dtype), padding=1)
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    return batchnorm_forward(out, ones, zeros, zeros, ones)[0]


y, conv_cache = conv2d_forward(x, w, padding=1)
out, _, _, bn_cache = batchnorm_forward(y, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
print(out.shape)  # (N, C_out, H, W) = (2, 3, 5, 5)
dout = rng.normal(size=out.shape)
dx_true = conv2d_backward(batchnorm_backward(dout, bn_cache)[0], conv_cache)[0]
print(dx_true.shape)  # like x: (2, 2, 5, 5)

numeric = numerical_gradient(conv_bn, x, dout)
print("rel_error", rel_error(dx_true, numeric))
assert rel_error(dx_true, numeric) < 1e-8

# %% [markdown]
# ## Centred versus one-sided differences
#
# Taylor: $L(x + h) = L + h L' + \tfrac{h^2}{2} L'' + \tfrac{h^3}{6} L''' + \dots$ So the
# one-sided difference
#
# $$ \frac{L(x + h) - L(x)}{h} = L' + \frac{h}{2} L'' + \dots $$
#
# has error $O(h)$, while in the centred difference
#
# $$ \frac{L(x + h) - L(x - h)}{2h} = L' + \frac{h^2}{6} L''' + \dots $$
#
# the even terms cancel: error $O(h^2)$. Halving $h$ halves the first error and quarters the
# second. `numerical_gradient` is centred; here is the one-sided one, for one entry $i$, to
# compare:


# %%
def forward_difference(f, x, dout, i, h):
    """One-sided difference of sum(f(x) * dout) along the flat entry i of x."""
    x_plus = x.copy()
    x_plus.reshape(-1)[i] += h
    return (np.sum(f(x_plus) * dout) - np.sum(f(x) * dout)) / h


i = int(np.abs(dx_true).argmax())  # the largest entry, so relative errors are meaningful
exact = dx_true.reshape(-1)[i]
hs = 10.0 ** np.arange(-1, -10.5, -0.5)
one_sided = np.array([abs(forward_difference(conv_bn, x, dout, i, h) - exact) for h in hs])
centred = np.array(
    [abs(numerical_gradient(conv_bn, x, dout, h=h, indices=[i]).reshape(-1)[i] - exact) for h in hs]
)
one_sided, centred = one_sided / abs(exact), centred / abs(exact)

# %% [markdown]
# Where truncation dominates (large $h$), the slopes on a log-log plot are the orders:

# %%
large = hs >= 1e-3
slope_one = np.polyfit(np.log10(hs[large]), np.log10(one_sided[large]), 1)[0]
slope_centred = np.polyfit(np.log10(hs[large]), np.log10(centred[large]), 1)[0]
print(f"slopes: one-sided {slope_one:.2f}, centred {slope_centred:.2f}")
assert abs(slope_one - 1) < 0.2 and abs(slope_centred - 2) < 0.2

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(hs, one_sided, "o-", label=f"one-sided (slope {slope_one:.2f})")
ax.loglog(hs, centred, "s-", label=f"centred (slope {slope_centred:.2f})")
ax.set_xlabel("step h")
ax.set_ylabel("relative error of one gradient entry")
ax.set_title("conv + batch norm, float64: error O(h) versus O(h^2)")
ax.invert_xaxis()
ax.legend()
show(fig, "07_centred_vs_one_sided")

# %% [markdown]
# Read the plot from left to right ($h$ shrinking). Both errors first fall, the centred one
# twice as steeply and far lower. Then both rise again: that is rounding, the subject of the
# next section. Wherever truncation dominates the centred difference is much better, for the
# same two evaluations of $f$ per entry (the one-sided one can reuse $L(x)$ across entries, a
# saving not worth the worse estimate).

# %%
assert np.all(centred[large] < one_sided[large])

# %% [markdown]
# ## Step size, float64 and float32
#
# $L$ is computed with a relative rounding error of about $\varepsilon$ (the machine epsilon,
# `np.finfo(dtype).eps`; float64: $2.2 \times 10^{-16}$, float32: $1.2 \times 10^{-7}$) times
# its size, and dividing the difference by $2h$ magnifies that: the rounding error of the
# difference is about $\varepsilon |L| / h$. The total error is roughly
#
# $$ c_1 h^2 + \frac{c_2 \, \varepsilon}{h} \qquad
#    \text{(truncation falls with } h \text{, rounding rises),} $$
#
# smallest where its derivative $2 c_1 h - c_2 \varepsilon / h^2$ is zero, at
# $h^* = (c_2 \varepsilon / (2 c_1))^{1/3}$: $\varepsilon^{1/3}$ ($6 \times 10^{-6}$ in float64,
# $5 \times 10^{-3}$ in float32) times a factor set by the function. Let us measure it on
# conv + batch norm, computed wholly in each type, on 20 sampled entries of `x`.

# %%
sample = rng.choice(x.size, 20, replace=False)
hs = 10.0 ** np.arange(-1, -12.5, -0.5)
errors = {}
for dtype in (np.float64, np.float32):
    xd, dd = x.astype(dtype), dout.astype(dtype)
    errors[dtype.__name__] = np.array(
        [
            rel_error(
                numerical_gradient(conv_bn, xd, dd, h=h, indices=sample).reshape(-1)[sample],
                dx_true.reshape(-1)[sample],
            )
            for h in hs
        ]
    )
for name, errs in errors.items():
    best = errs.argmin()
    print(f"{name}: best h {hs[best]:.0e}, error {errs[best]:.1e}; at h=1e-6: {errs[hs == 1e-6]}")

# The model c1 * h^2 + c2 * eps / h, with c1 read off at h = 0.1 and c2 = 4, drawn dashed:
c1 = errors["float64"][0] / hs[0] ** 2
fig, ax = plt.subplots(figsize=(8, 4.5))
for name, marker in [("float64", "o-"), ("float32", "s-")]:
    ax.loglog(hs, errors[name], marker, label=name)
ax.loglog(hs, c1 * hs**2, "k--", linewidth=1, label="truncation c1 h^2")
for name, color in [("float64", "C0"), ("float32", "C1")]:
    eps = np.finfo(name).eps
    ax.loglog(hs, 4 * eps / hs, "--", color=color, linewidth=1, label=f"rounding 4 eps/h, {name}")
ax.axvline(1e-6, color="gray", linestyle=":", label="default h = 1e-6")
ax.set_xlabel("step h")
ax.set_ylabel("relative error (rel_error, 20 entries)")
ax.set_title("Centred differences of conv + batch norm, computed in float64 and float32")
ax.set_ylim(1e-12, 3)
ax.invert_xaxis()
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
show(fig, "07_step_size_float32_float64")

# %% [markdown]
# Both curves follow the same truncation line at large $h$, and each then turns up along its
# own rounding line, $4 \varepsilon / h$: the simple model describes the measurements well.
# float64 falls to about $10^{-10}$, and at the default $h = 10^{-6}$ it is still below
# $10^{-8}$. float32 turns up three decades earlier and never gets below about $10^{-5}$; at
# $h = 10^{-6}$ its error is tens of percent. Below $h \approx 6 \times 10^{-8}$ an entry of `x`
# near 1 does not change at all ($x + h$ rounds to $x$ in float32), the difference is 0 and the
# error 100%. Hence: check gradients in float64; a float32 check can only be coarse.

# %%
f64, f32 = errors["float64"], errors["float32"]
assert f64.min() < 1e-9 and f64[hs == 1e-6][0] < 1e-8
assert f32.min() > 1e-6 and f32[hs == 1e-6][0] > 1e-2
assert np.float32(1.0) + np.float32(1e-8) == np.float32(1.0)
assert np.all(f32[hs < 1e-8] == 1.0)
# Where rounding dominates, the error grows like 1/h: slope -1 on the log-log plot.
tiny = (hs <= 1e-7) & (hs >= 1e-12)
slope_rounding = np.polyfit(np.log10(hs[tiny]), np.log10(f64[tiny]), 1)[0]
print(f"float64 slope for h <= 1e-7: {slope_rounding:.2f}")
assert abs(slope_rounding + 1) < 0.25

# %% [markdown]
# With the $c_1$ of the plot and $c_2 = 4$ the formula for the best step predicts the measured
# minima within a factor of 3:

# %%
for name, errs in errors.items():
    h_best = (4 * np.finfo(name).eps / (2 * c1)) ** (1 / 3)
    print(f"{name}: predicted best h {h_best:.1e}, measured {hs[errs.argmin()]:.0e}")
    assert 1 / 3 < h_best / hs[errs.argmin()] < 3

# %% [markdown]
# ## Complex-step differentiation: no step-size trade-off
#
# The rounding error above comes from the subtraction $f(x + h) - f(x - h)$ of two nearly equal
# numbers. For a function that is *analytic* (given by a power series, as exp, sin, products and
# quotients are), a step along the imaginary axis avoids it. Taylor's expansion,
#
# $$ f(x + ih) = f(x) + ih f'(x) - \tfrac{h^2}{2} f''(x) - \tfrac{ih^3}{6} f'''(x) + \dots, $$
#
# gives $f'(x) = \operatorname{Im} f(x + ih) / h + O(h^2)$ with no subtraction at all (Squire and
# Trapp 1998). The truncation error still falls as $h^2$, and nothing grows as $h$ shrinks: with
# $h = 10^{-20}$ the derivative is exact to the last bits of float64.


# %%
def f_scalar(x):
    return np.exp(x) * np.sin(x) / np.sqrt(x)


def df_scalar(x):
    return f_scalar(x) * (1 + np.cos(x) / np.sin(x) - 1 / (2 * x))


x0 = 1.5
steps = 10.0 ** -np.arange(1, 21)
centred_err = [abs((f_scalar(x0 + h) - f_scalar(x0 - h)) / (2 * h) - df_scalar(x0)) for h in steps]
complex_err = [abs(f_scalar(x0 + 1j * h).imag / h - df_scalar(x0)) for h in steps]
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.loglog(steps, np.maximum(centred_err, 1e-17), "o-", label="centred difference")
ax.loglog(steps, np.maximum(complex_err, 1e-17), "s-", label="complex step")
ax.invert_xaxis()
ax.set(xlabel="step h", ylabel="absolute error", title="d/dx [exp(x) sin(x) / sqrt(x)] at 1.5")
ax.legend()
fig.tight_layout()
show(fig, "07_complex_step")
print(f"smallest centred error {min(centred_err):.1e}, complex step at h = 1e-20: "
      f"{complex_err[-1]:.1e}")  # fmt: skip
assert complex_err[-1] < 1e-14 < min(centred_err)

# %% [markdown]
# It works on a whole operation whose code is written with analytic functions only, if the code
# runs on complex arrays. The softmax across branches (tutorial 8), written out as in
# tutorial 2 (the maximum taken over the real part, which only shifts every logit of a column by
# the same amount), against `branch_softmax_backward`:


# %%
def softmax_complex(z):
    e = np.exp(z - z.real.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


z = rng.normal(size=(2, 3, 4))
da = rng.normal(size=z.shape)
complex_grad = np.empty_like(z)
for i in range(z.size):
    zc = z.astype(complex)
    zc.flat[i] += 1e-20j
    complex_grad.flat[i] = np.sum(softmax_complex(zc).imag * da) / 1e-20
_, sm_cache = branch_softmax_forward(z)
err_complex = rel_error(branch_softmax_backward(da, sm_cache), complex_grad)
print(f"branch softmax: relative error against the complex step {err_complex:.1e}")
assert err_complex < 1e-14

# %% [markdown]
# Where it breaks: anything that is not analytic. `abs`, `max`, `np.maximum` and every
# comparison look at the real part or at the modulus, and the complex conjugate (hidden inside
# `np.abs`, and inside `np.var` of a complex array, which computes $|x - \mu|^2$) has no complex
# derivative at all. ReLU's kink is the same obstacle as for finite differences, and worse:
# `np.maximum` has no meaning on complex numbers. Batch norm's variance is a quiet example:
# `np.var` of a complex array conjugates, and the complex step then reports a wrong gradient
# without any warning.


# %%
def variance_conjugated(x):
    return np.var(x)  # mean(|x - mean|^2): conjugates


def variance_analytic(x):
    return np.mean((x - x.mean()) ** 2)


v = rng.normal(size=6)
true_grad = 2 * (v - v.mean()) / v.size
for name, var in [("np.var", variance_conjugated), ("(x - mean)^2", variance_analytic)]:
    grad_cs = np.array([var(v + 1e-20j * np.eye(6)[i]).imag / 1e-20 for i in range(6)])
    print(f"{name}: complex-step gradient {np.round(grad_cs, 3)}")
    if name == "np.var":
        assert np.allclose(grad_cs, 0)  # the conjugate cancels the imaginary part: all zero
    else:
        np.testing.assert_allclose(grad_cs, true_grad, rtol=1e-12)

# %% [markdown]
# So complex steps suit code written for them. skscratch's pairs check their dtypes and refuse
# complex arrays, and its forward passes use `max` and comparisons (ReLU, the softmax's shift),
# which is why its own checks use centred differences in float64 with $h = 10^{-6}$: accurate to
# about $10^{-8}$ relative, and applicable to every pair as it is.

# %% [markdown]
# ## Measuring the error
#
# `rel_error` divides the largest difference by the largest entry of either gradient,
#
# $$ \text{rel\_error}(a, n) = \frac{\max_i |a_i - n_i|}{\max_i \max(|a_i|, |n_i|)}: $$

# %%
print(inspect.getsource(rel_error))

# %% [markdown]
# Why not the usual per-entry $|a_i - n_i| / \max(|a_i|, |n_i|)$? Because some entries of a
# correct gradient are zero or nearly so, and there the finite difference is pure rounding
# noise, of size $\varepsilon |L| / h$, here a few $10^{-9}$: per entry that is an error of
# 100%. An example: batch norm with channel 0 of `dout` constant. The normalised values of a
# channel sum to 0, so that channel of the output contributes a constant to $L$, and its true
# gradient is exactly 0.

# %%
x_bn = rng.normal(size=(4, 3, 3, 3))
g_bn, b_bn = rng.normal(size=3), rng.normal(size=3)
stats = (np.zeros(3), np.ones(3))
_, _, _, cache = batchnorm_forward(x_bn, g_bn, b_bn, *stats)
dout_bn = rng.normal(size=x_bn.shape)
dout_bn[:, 0] = 0.5  # (N, C, H, W): channel 0 constant
analytic = batchnorm_backward(dout_bn, cache)[0]
numeric = numerical_gradient(lambda v: batchnorm_forward(v, g_bn, b_bn, *stats)[0], x_bn, dout_bn)
per_entry = np.abs(analytic - numeric) / np.maximum(np.abs(analytic), np.abs(numeric))
print("channel 0: max |analytic|", np.abs(analytic[:, 0]).max(), "max |numeric|", end=" ")
print(np.abs(numeric[:, 0]).max())
print(f"per-entry max {per_entry.max():.2f}, rel_error {rel_error(analytic, numeric):.1e}")
assert per_entry.max() > 0.5 and rel_error(analytic, numeric) < 1e-7

# %% [markdown]
# Scaling by the largest entry measures the error against the size of the gradient as a
# whole, which is what matters for learning. Its blind spot: an error confined to entries much
# smaller than the largest one looks small. (And a gradient that is zero everywhere, like batch
# norm's with `dout` = 1, cannot be checked by any relative measure.)
#
# ## ReLU's kink
#
# ReLU has no derivative at 0. If an input lies within $h$ of 0, $x - h$ and $x + h$ fall on
# different sides of the kink and the centred difference averages the two slopes:
#
# $$ \frac{\text{relu}(x + h) - \text{relu}(x - h)}{2h} = \frac{x + h}{2h}
#    \qquad (|x| < h), $$
#
# anything between 0 and 1. The backward pass, correctly, says 1 or 0 (0 at exactly 0, as
# PyTorch). The check fails, though nothing is wrong:

# %%
h = 1e-6
x_relu = rng.normal(size=(2, 3, 4, 4))
x_relu.reshape(-1)[:6] = np.array([0.3, -0.5, 0.8, -0.2, 0.0, 0.6]) * h  # within h of 0
kinked = check_gradients(relu_forward, relu_backward, {"x": x_relu}, h=h)
print("inputs near 0:", kinked)
assert kinked["x"] > 1e-3

# %% [markdown]
# The fix is in the test, not the code: nudge every input away from 0 by more than $h$ (here by
# 0.1, as `skscratch.gradcheck` does for its own ReLU case), and the check passes:

# %%
x_nudged = x_relu + np.where(x_relu >= 0, 0.1, -0.1)
nudged = check_gradients(relu_forward, relu_backward, {"x": x_nudged}, h=h)
print("inputs nudged:", nudged)
assert nudged["x"] < 1e-6

# %% [markdown]
# In a network random activations rarely land within $10^{-6}$ of 0, but with thousands of them
# a rare failure of a whole-network check is to be expected; look at which entries fail before
# looking for a bug.
#
# ## A gallery of planted bugs
#
# Each of these is a plausible mistake, planted in a separate, clearly named broken backward
# pass and checked against the correct forward pass. Each broken pass is built around the
# package's correct one, so that the planted mistake is the only difference. Each must fail
# (error $> 10^{-3}$) where the package's passes ($< 10^{-6}$).
#
# ### 1. Batch norm without the mean term
#
# With $\hat{x}$ the normalised input, $\sigma^{-1} = 1/\sqrt{\operatorname{var} + \epsilon}$
# and $d\hat{x} = \gamma \, \partial L/\partial \text{out}$, tutorial 6 derived (means over the
# batch and the plane, per channel)
#
# $$ dx = \sigma^{-1} \big( d\hat{x} - \operatorname{mean}(d\hat{x})
#         - \hat{x} \operatorname{mean}(d\hat{x} \, \hat{x}) \big). $$
#
# The bug leaves out the middle term, $-\operatorname{mean}(d\hat{x})$, forgetting that moving
# $x$ moves $\mu$. The broken pass adds back to the correct $dx$ what that term takes away.


# %%
def batchnorm_backward_without_mean_term(dout, cache):
    """BROKEN on purpose: the mean term -mean(dxhat) is missing."""
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    dxhat = dout * cache.gamma[None, :, None, None]
    mean_term = dxhat.mean(axis=(0, 2, 3), keepdims=True) * cache.inv_std[None, :, None, None]
    return dx + mean_term, dgamma, dbeta


bn_inputs = {"x": x_bn, "gamma": g_bn, "beta": b_bn}
bn_fixed = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
gallery = {}
gallery["batch norm, no mean term"] = (
    check_gradients(
        batchnorm_forward, batchnorm_backward_without_mean_term, bn_inputs, fixed=bn_fixed
    ),
    check_gradients(batchnorm_forward, batchnorm_backward, bn_inputs, fixed=bn_fixed),
)
print(gallery["batch norm, no mean term"])

# %% [markdown]
# The check names the culprit: `dgamma` and `dbeta` are still right, only `x` fails.

# %%
broken_bn = gallery["batch norm, no mean term"][0]
assert broken_bn["x"] > 1e-3 and broken_bn["gamma"] < 1e-6 and broken_bn["beta"] < 1e-6

# %% [markdown]
# ### 2. col2im that overwrites instead of adding
#
# `im2col` (tutorial 3) only copies pixels: column entry $(c, i, j, \ell)$ of an image is the
# pixel that tap $(i, j)$ of window $\ell$ reads. Its backward pass, `col2im`, therefore sends
# each column entry's gradient back to the pixel it was read from, and the convolution's
# $dx$ is `col2im` of the columns' gradient. With overlapping windows a pixel $p$ was read by
# several columns, and its gradient is the *sum* of theirs:
#
# $$ dx_{n,c,p} = \sum_{(i, j, \ell):\ \text{tap } (i, j) \text{ of window } \ell
#    \text{ reads } p} d\text{cols}_{n, (c, i, j), \ell}. $$
#
# The broken copy lets the last kernel tap to reach a pixel overwrite what the taps before it
# left there. It is built from `col2im` itself: one tap at a time (a single tap of the windows
# reads every pixel at most once, so for it a sum is a copy), each tap writing over the pixels
# it reaches.


# %%
def col2im_overwrite(cols, x_shape, kh, kw, **options):
    """BROKEN on purpose: where windows overlap, the last tap to reach a pixel wins."""
    n, c = x_shape[:2]
    taps = cols.reshape(n, c, kh * kw, -1)  # (N, C, KH*KW, L): rows ordered (c, i, j)
    dx = np.zeros(x_shape, dtype=cols.dtype)
    for t in range(kh * kw):
        one_tap, reached = np.zeros_like(taps), np.zeros_like(taps)
        one_tap[:, :, t], reached[:, :, t] = taps[:, :, t], 1.0
        written = col2im(one_tap.reshape(cols.shape), x_shape, kh, kw, **options)
        mask = col2im(reached.reshape(cols.shape), x_shape, kh, kw, **options) > 0
        dx = np.where(mask, written, dx)
    return dx


# %% [markdown]
# To check a scatter, pair it with its forward pass, `im2col`; the cache is what the scatter
# needs to know. The same pair runs with either scatter:


# %%
def im2col_pair(x, *, kh, kw, stride=1, padding=0):
    """im2col as a forward/backward pair's forward: (cols, cache)."""
    return im2col(x, kh, kw, stride=stride, padding=padding), (x.shape, kh, kw, stride, padding)


def im2col_backward_with(scatter):
    """The pair's backward: the columns' gradient through `scatter` (a col2im)."""

    def backward(dcols, cache):
        x_shape, kh, kw, stride, padding = cache
        return scatter(dcols, x_shape, kh, kw, stride=stride, padding=padding)

    return backward


x_conv = rng.normal(size=(2, 2, 6, 6))
overlapping = {"kh": 3, "kw": 3, "padding": 1}  # 3x3 windows, stride 1: pixels read up to 9 times
gallery["col2im overwrites"] = (
    check_gradients(
        im2col_pair, im2col_backward_with(col2im_overwrite), {"x": x_conv}, fixed=overlapping
    ),
    check_gradients(im2col_pair, im2col_backward_with(col2im), {"x": x_conv}, fixed=overlapping),
)
print(gallery["col2im overwrites"])

# %% [markdown]
# A test with non-overlapping windows would miss this bug: with a 2x2 kernel and stride 2 each
# pixel is read once, and overwriting and adding agree. Test cases must include overlap.

# %%
disjoint = {"kh": 2, "kw": 2, "stride": 2}
missed = check_gradients(
    im2col_pair, im2col_backward_with(col2im_overwrite), {"x": x_conv}, fixed=disjoint
)
print("2x2 windows, stride 2:", missed)
assert missed["x"] < 1e-6

# %% [markdown]
# ### 3. Branch softmax summed over the wrong axis
#
# The SK unit's attention is a softmax over the $M$ branches, axis 1 of (N, M, C), and its
# backward is
#
# $$ \frac{\partial L}{\partial z_m} = a_m \Big( \frac{\partial L}{\partial a_m}
#    - \sum_k \frac{\partial L}{\partial a_k} a_k \Big), $$
#
# the sum over that same axis (tutorial 8 derives it). Summing over the channels (axis 2)
# instead still broadcasts, so nothing complains. The broken pass hands the package's backward
# its arrays with the branch and channel axes swapped, so that its sum runs over the channels:


# %%
def branch_softmax_backward_wrong_axis(da, cache):
    """BROKEN on purpose: the sum over branches taken over channels (axis 2) instead."""
    swapped = cache._replace(a=cache.a.swapaxes(1, 2))  # (N, C, M)
    return branch_softmax_backward(da.swapaxes(1, 2), swapped).swapaxes(1, 2)


softmax_inputs = {"logits": rng.normal(size=(3, 2, 5))}  # (N, M, C)
gallery["softmax, wrong axis"] = (
    check_gradients(branch_softmax_forward, branch_softmax_backward_wrong_axis, softmax_inputs),
    check_gradients(branch_softmax_forward, branch_softmax_backward, softmax_inputs),
)
print(gallery["softmax, wrong axis"])

# %% [markdown]
# ### 4. A grouped weight with its in and out channels swapped
#
# A grouped conv weight `(C_out, C_in/G, KH, KW)` holds, for each group $g$, a
# `(C_out/G, C_in/G, KH, KW)` block. Mixing up which axis is "in" and which is "out" inside the
# group swaps those two axes. When $C_\text{in}/G = C_\text{out}/G$, the swapped weight has
# exactly the original shape, every reshape and product still fits, and only a gradient check
# can tell. Here $C_\text{in} = C_\text{out} = 4$ and $G = 2$, so both are 2 per group:


# %%
def conv2d_backward_swapped_group_weight(dout, cache):
    """BROKEN on purpose: dx computed with each group's (out, in) weight axes swapped."""
    _, dw, db = conv2d_backward(dout, cache)
    c_out, c_in_g, kh, kw = cache.w.shape
    g = cache.groups
    per_group = cache.w.reshape(g, c_out // g, c_in_g, kh, kw)  # (G, C_out/G, C_in/G, KH, KW)
    swapped = per_group.swapaxes(1, 2)  # (G, C_in/G, C_out/G, KH, KW): no error if they are equal
    dx, _, _ = conv2d_backward(dout, cache._replace(w=swapped.reshape(cache.w.shape)))
    return dx, dw, db


grouped_inputs = {"x": rng.normal(size=(2, 4, 5, 5)), "w": rng.normal(size=(4, 2, 3, 3))}
grouped = {"padding": 1, "groups": 2}
gallery["grouped weight swapped"] = (
    check_gradients(
        conv2d_forward, conv2d_backward_swapped_group_weight, grouped_inputs, fixed=grouped
    ),
    check_gradients(conv2d_forward, conv2d_backward, grouped_inputs, fixed=grouped),
)
print(gallery["grouped weight swapped"])

# %% [markdown]
# ### The verdict
#
# In every case the broken backward fails on its input (the gradient it gets wrong) by far more
# than $10^{-3}$, while the package's passes every input below $10^{-6}$:

# %%
print(f"{'planted bug':28} {'broken dx':>10} {'package (worst input)':>22}")
for name, (broken, package) in gallery.items():
    dx_key = "logits" if "logits" in broken else "x"
    print(f"{name:28} {broken[dx_key]:10.1e} {max(package.values()):22.1e}")
    assert broken[dx_key] > 1e-3
    assert max(package.values()) < 1e-6

# %% [markdown]
# ### Your turn: gradient checking (assignment exercise `gradient_checking`)
#
# In a student copy (`python -m skscratch assignment make`), the bodies of `centred_difference`,
# `best_float32_step`, `find_the_planted_bug` and `relu_kink_entries` in
# `skscratch/exercises/gradient_checking.py` are yours to write, from this chapter: the centred
# difference of a scalar function, the best float32 step among a few, a planted bug found by a
# gradient check, and the entries a ReLU check misjudges. Put every perturbed entry back before
# the next, and in `best_float32_step` keep every number in float32, or the rounding this
# chapter measured disappears. The cell below runs the exercise's visible checks on them.

# %%
assert check("gradient_checking") == 0, "exercise gradient_checking: see the failures above"

# %% [markdown]
# ## Summary
#
# - Check $\partial L/\partial x$ for $L = \sum_i f(x)_i g_i$ with a random $g$: conv + batch
#   norm agrees with its finite differences to better than $10^{-8}$.
# - Centred differences have error $O(h^2)$, one-sided ones $O(h)$: the measured slopes were
#   2 and 1 (within 0.2).
# - Truncation falls and rounding rises as $h$ shrinks, and the best step is about
#   $(c_2 \varepsilon / 2 c_1)^{1/3}$ (predicted within a factor of 3). In float64
#   $h = 10^{-6}$ gives below $10^{-8}$ and the best step below $10^{-9}$; float32 never gets
#   below $10^{-6}$ and is off by more than 1% at $h = 10^{-6}$: check in float64.
# - The complex step $\operatorname{Im} f(x + ih)/h$ has no subtraction: with $h = 10^{-20}$
#   it is exact to $10^{-14}$, but only for analytic code (`np.var` of a complex array silently
#   gives 0).
# - Measure the error relative to the largest entry (`rel_error`): per entry, a correct batch
#   norm gradient looked more than 50% wrong, while `rel_error` was below $10^{-7}$.
# - Keep inputs away from kinks by more than $h$: ReLU inputs within $h$ of 0 fail the check
#   ($> 10^{-3}$), nudged ones pass ($< 10^{-6}$).
# - Plant a bug to see that a check can fail: each of the four planted bugs failed by more
#   than $10^{-3}$, and the overwriting `col2im` only where windows overlap. A check that
#   cannot fail proves nothing.
#
# ## Exercises
#
# 1. For $f(x) = x^3$ at $x = 2$ with $h = 0.1$, work out from the Taylor series (by hand: for
#    a cubic it stops after the third derivative) the error of the one-sided and of the centred
#    difference.

# %%
# BEGIN SOLUTION
one_sided_error = 0.1 / 2 * 12 + 0.1**2 / 6 * 6  # h f''/2 + h^2 f'''/6, f'' = 6x, f''' = 6
centred_error = 0.1**2 / 6 * 6  # h^2 f'''/6: the even terms cancel
# END SOLUTION
assert math.isclose((2.1**3 - 2**3) / 0.1 - 12, one_sided_error, rel_tol=1e-9)
assert math.isclose((2.1**3 - 1.9**3) / 0.2 - 12, centred_error, rel_tol=1e-9)

# %% [markdown]
# 2. With $h = 10^{-6}$, what does the centred difference report for ReLU at the inputs
#    $x = (0.3, -0.5, 0.8, -0.2, 0, 0.6) \cdot h$, the ones planted in `x_relu` above?

# %%
# BEGIN SOLUTION
kink_values = (np.array([0.3, -0.5, 0.8, -0.2, 0.0, 0.6]) + 1) / 2  # (x + h) / 2h
# END SOLUTION
near_zero = np.array([0.3, -0.5, 0.8, -0.2, 0.0, 0.6]) * 1e-6
reported = numerical_gradient(lambda v: relu_forward(v)[0], near_zero, np.ones(6), h=1e-6)
np.testing.assert_allclose(kink_values, reported, rtol=1e-6)

# %% [markdown]
# 3. float16 has $\varepsilon = 2^{-10}$. With this chapter's error model
#    $c_1 h^2 + c_2 \varepsilon / h$, the measured `c1` and $c_2 = 4$, what step size is best
#    for a float16 check?

# %%
# BEGIN SOLUTION
h_float16 = (4 * 2.0**-10 / (2 * c1)) ** (1 / 3)
# END SOLUTION
grid = np.logspace(-8, 1, 90001)
model = c1 * grid**2 + 4 * float(np.finfo(np.float16).eps) / grid
assert abs(math.log10(grid[model.argmin()]) - math.log10(h_float16)) < 1e-3

# %% [markdown]
# 4. The log-sum-exp over the branches, $L(z) = \sum_{n,c} \log \sum_m e^{z_{nmc}}$, has the
#    softmax across branches as its gradient. Compute that gradient at `z` (above) with complex
#    steps of $h = 10^{-20}$.

# %%
# BEGIN SOLUTION
lse_grad = np.empty_like(z)
for i in range(z.size):
    zc = z.astype(complex)
    zc.flat[i] += 1e-20j
    lse_grad.flat[i] = np.log(np.exp(zc).sum(axis=1)).sum().imag / 1e-20
# END SOLUTION
softmax_over_branches = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
np.testing.assert_allclose(lse_grad, softmax_over_branches, rtol=1e-13)
