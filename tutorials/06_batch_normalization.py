# %% [markdown]
# # 6. Batch normalisation, forward and backward
#
# In an SK network batch norm follows every convolution: each branch of the SK unit is
# conv -> BN -> ReLU, and the fuse step's fully connected layer is followed by BN and ReLU too.
# This tutorial builds the forward pass from its formulas, derives the backward pass step by
# step, and then looks at two things that trip people up: training versus evaluation mode, and
# why a gradient check with an all-ones upstream gradient can pass a wrong backward pass.

# %%
import inspect

import numpy as np

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    fast,
    layers,
    relu_backward,
    relu_forward,
)
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## The forward pass in training mode
#
# For x of shape (N, C), each channel c is normalised with the statistics of its m = N values
# in the batch:
#
#     mu   = (1/m) sum_i x_i
#     var  = (1/m) sum_i (x_i - mu)^2        (biased: divide by m, not m - 1)
#     xhat = (x - mu) / sqrt(var + eps)      (eps = 1e-5)
#     out  = gamma * xhat + beta
#
# gamma and beta, shape (C,), are learned; they let the network undo the normalisation if it
# wants to. `batchnorm_forward` also takes the running statistics (below) and returns their
# updated values, without modifying the arrays passed in.

# %%
N, C = 6, 3
x = rng.normal(loc=[2.0, -1.0, 0.5], scale=[3.0, 0.5, 1.0], size=(N, C))
gamma, beta = rng.normal(size=C), rng.normal(size=C)
running_mean, running_var = np.zeros(C), np.ones(C)
print(x.shape)  # (N, C) = (6, 3)

out, new_mean, new_var, cache = batchnorm_forward(x, gamma, beta, running_mean, running_var)
print(out.shape)  # (N, C) = (6, 3)

mu = x.mean(axis=0)  # (C,)
var = ((x - mu) ** 2).mean(axis=0)  # (C,), biased
xhat = (x - mu) / np.sqrt(var + 1e-5)  # (N, C)
np.testing.assert_allclose(out, gamma * xhat + beta, rtol=1e-12)
np.testing.assert_allclose(cache.xhat, xhat, rtol=1e-12)

# %% [markdown]
# Each column of xhat has mean 0 and (biased) variance var / (var + eps), just under 1:

# %%
print(xhat.mean(axis=0), xhat.var(axis=0))
np.testing.assert_allclose(xhat.mean(axis=0), 0, atol=1e-12)
np.testing.assert_allclose(xhat.var(axis=0), var / (var + 1e-5), rtol=1e-12)

# %% [markdown]
# ## The running statistics
#
# At test time there may be one image, not a batch, so the network needs fixed statistics.
# During training it keeps exponential moving averages, with PyTorch's convention: momentum
# 0.1 is the weight of the *new* batch, and the running variance is updated with the
# *unbiased* batch variance (divide by m - 1), although normalising used the biased one:
#
#     running_mean <- 0.9 * running_mean + 0.1 * mu
#     running_var  <- 0.9 * running_var  + 0.1 * var * m / (m - 1)

# %%
np.testing.assert_allclose(new_mean, 0.9 * running_mean + 0.1 * mu, rtol=1e-12)
np.testing.assert_allclose(new_var, 0.9 * running_var + 0.1 * x.var(axis=0, ddof=1), rtol=1e-12)
assert np.all(running_mean == 0) and np.all(running_var == 1)  # the inputs are untouched

# %% [markdown]
# ## Images: (N, C, H, W)
#
# For images the statistics of channel c run over the batch *and* all pixels: m = N * H * W
# values per channel, axes (0, 2, 3). So BatchNorm2d is the (N, C) version applied to a
# (N * H * W, C) matrix of "pixels by channels". Let us check exactly that.

# %%
N, C, H, W = 2, 3, 4, 5
x4 = rng.normal(size=(N, C, H, W))
g4, b4 = rng.normal(size=C), rng.normal(size=C)
out4, mean4, var4, _ = batchnorm_forward(x4, g4, b4, np.zeros(C), np.ones(C))
print(out4.shape)  # (N, C, H, W) = (2, 3, 4, 5)

pixels = x4.transpose(0, 2, 3, 1).reshape(-1, C)  # (N*H*W, C) = (40, 3)
out2, mean2, var2, _ = batchnorm_forward(pixels, g4, b4, np.zeros(C), np.ones(C))
np.testing.assert_allclose(out4, out2.reshape(N, H, W, C).transpose(0, 3, 1, 2), rtol=1e-12)
np.testing.assert_allclose(mean4, mean2, rtol=1e-12)
np.testing.assert_allclose(var4, var2, rtol=1e-12)

# %% [markdown]
# ## The backward pass, derived step by step
#
# Take one channel (everything is per channel) with m values. The forward pass as a graph of
# small steps; note that x enters three times, directly and through mu and (via xc) var:
#
#     x ---> mu = mean(x)
#     x, mu ---> xc = x - mu
#     xc ---> var = mean(xc^2) ---> istd = (var + eps)^(-1/2)
#     xc, istd ---> xhat = xc * istd ---> out = gamma * xhat + beta
#
# Backward, given dout = dL/dout, we walk the graph in reverse:
#
# 1. `dbeta = sum(dout)`, `dgamma = sum(dout * xhat)`, `dxhat = dout * gamma`.
# 2. xhat = xc * istd, and istd is one number for the whole channel, so
#    `distd = sum(dxhat * xc)`, and the direct part of xc's gradient is `dxhat * istd`.
# 3. istd = (var + eps)^(-1/2), so
#    `dvar = distd * (-1/2) * (var + eps)^(-3/2) = -1/2 * sum(dxhat * xc) * istd^3`.
# 4. var = (1/m) sum xc^2, so each xc gets `dvar * 2 * xc / m` more:
#    `dxc = dxhat * istd + dvar * 2 * xc / m`.
# 5. xc = x - mu: x gets `dxc` directly, and mu gets `dmu = -sum(dxc)`.
# 6. mu = (1/m) sum x, so every x gets `dmu / m`: `dx = dxc + dmu / m`.
#
# Now simplify, using xc * istd = xhat and sum(xhat) = 0. Step 4 becomes
# `dxc = istd * (dxhat - xhat * mean(dxhat * xhat))`; then
# `dmu = -istd * sum(dxhat) + istd * mean(dxhat * xhat) * sum(xhat) = -istd * sum(dxhat)`, and
#
#     dx = istd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
#
# Three terms: the direct path, the **mean term** (through mu) and the **variance term**
# (through var). Here are steps 1-6 written out in NumPy, for (N, C) and (N, C, H, W) alike:


# %%
def batchnorm_backward_long(dout, x, gamma, eps=1e-5):
    """Batch-norm backward in training mode, following steps 1-6 above (recomputes forward)."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)  # (C,) -> broadcasts against x
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc**2).mean(axis=axes, keepdims=True)
    istd = 1.0 / np.sqrt(var + eps)
    xhat = xc * istd
    # 1. the affine step
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * gamma.reshape(shape)
    # 2. xhat = xc * istd
    distd = (dxhat * xc).sum(axis=axes, keepdims=True)
    dxc = dxhat * istd
    # 3. istd = (var + eps)^(-1/2)
    dvar = distd * -0.5 * istd**3
    # 4. var = mean(xc^2)
    dxc = dxc + dvar * 2 * xc / m
    # 5. xc = x - mu
    dmu = -dxc.sum(axis=axes, keepdims=True)
    # 6. mu = mean(x)
    dx = dxc + dmu / m
    return dx, dgamma, dbeta


# %% [markdown]
# The package computes the simplified formula in a few lines:

# %%
print(inspect.getsource(batchnorm_backward))

# %% [markdown]
# Both agree, on (N, C) and on (N, C, H, W), with a random upstream gradient:

# %%
for xs, g, b in [(x, gamma, beta), (x4, g4, b4)]:
    c = xs.shape[1]
    out_s, _, _, cache_s = batchnorm_forward(xs, g, b, np.zeros(c), np.ones(c))
    dout = rng.normal(size=out_s.shape)
    for mine, package in zip(
        batchnorm_backward_long(dout, xs, g), batchnorm_backward(dout, cache_s), strict=True
    ):
        np.testing.assert_allclose(mine, package, rtol=1e-10, atol=1e-12)
    print(xs.shape, "long derivation == batchnorm_backward")

# %% [markdown]
# And the package's backward agrees with finite differences (`check_gradients` weights the
# output with a random upstream gradient and returns the largest relative error per input):

# %%
errors = check_gradients(
    batchnorm_forward,
    batchnorm_backward,
    {"x": x4, "gamma": g4, "beta": b4},
    fixed={"running_mean": np.zeros(C), "running_var": np.ones(C)},
)
print(errors)
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## Training versus evaluation
#
# In evaluation mode (`training=False`) batch norm uses the running statistics instead of the
# batch's, and leaves them unchanged: each output then depends on its own input only, so an
# image gets the same output whatever else is in the batch. Let us train on 40 batches drawn
# from a distribution with per-channel means 3, -2, 0 and standard deviations 2, 0.5, 1, and
# follow the running statistics.

# %%
C = 3
true_mean, true_std = np.array([3.0, -2.0, 0.0]), np.array([2.0, 0.5, 1.0])
gamma, beta = np.ones(C), np.zeros(C)
rmean, rvar = np.zeros(C), np.ones(C)
history = [(rmean, rvar)]
for _ in range(40):
    batch = rng.normal(true_mean[None, :, None, None], true_std[None, :, None, None], (8, C, 4, 4))
    _, new_rmean, new_rvar, _ = batchnorm_forward(batch, gamma, beta, rmean, rvar)
    # The update, once more by hand: 10% new batch, unbiased variance (m = 8*4*4 = 128).
    np.testing.assert_allclose(new_rmean, 0.9 * rmean + 0.1 * batch.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(new_rvar, 0.9 * rvar + 0.1 * batch.var(axis=(0, 2, 3), ddof=1))
    rmean, rvar = new_rmean, new_rvar
    history.append((rmean, rvar))
print("running mean", rmean, "running std", np.sqrt(rvar))
# After 40 steps the starting values weigh 0.9^40 = 1.5%: close to the true statistics.
np.testing.assert_allclose(rmean, true_mean, atol=0.2)
np.testing.assert_allclose(np.sqrt(rvar), true_std, rtol=0.1)

plt = pyplot()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
means, variances = (np.array(h) for h in zip(*history, strict=True))  # (41, C) each
for ax, values, truth, name in [
    (axes[0], means, true_mean, "running mean"),
    (axes[1], np.sqrt(variances), true_std, "sqrt(running var)"),
]:
    for c in range(C):
        ax.plot(values[:, c], color=f"C{c}", label=f"channel {c}")
        ax.axhline(truth[c], color=f"C{c}", linestyle=":", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_title(f"{name} (dotted: true value)")
axes[0].legend(loc="center right", bbox_to_anchor=(1, 0.68))
fig.suptitle("Running statistics, momentum 0.1, starting from mean 0 and variance 1", y=1.02)
show(fig, "06_running_mean")

# %% [markdown]
# Evaluation mode normalises with those running statistics, returns them unchanged, and the
# output of one image does not depend on the rest of the batch (in training mode it does):

# %%
batch = rng.normal(true_mean[None, :, None, None], true_std[None, :, None, None], (8, C, 4, 4))
out_eval, m_eval, v_eval, _ = batchnorm_forward(batch, gamma, beta, rmean, rvar, training=False)
expected = (batch - rmean[None, :, None, None]) / np.sqrt(rvar[None, :, None, None] + 1e-5)
np.testing.assert_allclose(out_eval, expected, rtol=1e-12)
assert np.array_equal(m_eval, rmean) and np.array_equal(v_eval, rvar)

one_eval = batchnorm_forward(batch[:1], gamma, beta, rmean, rvar, training=False)[0]
np.testing.assert_allclose(one_eval, out_eval[:1], rtol=1e-12)
out_train = batchnorm_forward(batch, gamma, beta, rmean, rvar)[0]
half_train = batchnorm_forward(batch[:4], gamma, beta, rmean, rvar)[0]
assert not np.allclose(half_train, out_train[:4])  # training: the batch matters

# %% [markdown]
# In evaluation mode mu and var are constants, so only the direct path is left:
# dx = dxhat / sqrt(running_var + eps). The gradient check covers that case too.

# %%
errors = check_gradients(
    batchnorm_forward,
    batchnorm_backward,
    {"x": batch, "gamma": rng.normal(size=C), "beta": rng.normal(size=C)},
    fixed={"running_mean": rmean, "running_var": rvar, "training": False},
)
print(errors)
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## Why an all-ones upstream gradient hides bugs
#
# A tempting gradient check sums the output, i.e. uses dout = 1. For batch norm that is a
# blind spot: sum(out) = sum(gamma * xhat + beta) = m * sum(beta), because every channel of
# xhat sums to 0, whatever x is. So the true dx is 0. And with dout = 1, dxhat = gamma is
# constant within a channel, so the variance term xhat * mean(dxhat * xhat) = gamma * xhat *
# mean(xhat) = 0 as well: a backward that forgets the variance term returns the same 0.
#
# Here is such a broken backward, clearly not the package's:


# %%
def batchnorm_backward_without_variance_term(dout, cache):
    """BROKEN on purpose: dx = istd * (dxhat - mean(dxhat)), the variance term left out."""
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    dxhat = dout * cache.gamma[None, :, None, None]
    dx = (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)) * cache.inv_std[None, :, None, None]
    return dx, dgamma, dbeta


x = rng.normal(size=(4, 3, 3, 3))
g, b = rng.normal(size=3), rng.normal(size=3)
_, _, _, cache = batchnorm_forward(x, g, b, np.zeros(3), np.ones(3))


def f(x):
    return batchnorm_forward(x, g, b, np.zeros(3), np.ones(3))[0]


# %% [markdown]
# With dout = 1 the true gradient is 0, the finite differences give 0 up to rounding (a few
# 1e-9), and the broken backward gives 0 too: the check passes. (rel_error is no use here,
# since everything is zero; we compare with an absolute tolerance.)

# %%
ones = np.ones_like(x)
numeric = numerical_gradient(f, x, ones)
dx_broken = batchnorm_backward_without_variance_term(ones, cache)[0]
print("max |numeric|", np.abs(numeric).max(), " max |broken dx|", np.abs(dx_broken).max())
np.testing.assert_allclose(dx_broken, numeric, atol=1e-7)
np.testing.assert_allclose(batchnorm_backward(ones, cache)[0], numeric, atol=1e-7)

# %% [markdown]
# With a random dout the broken backward is far off, and the package's is right:

# %%
dout = rng.normal(size=x.shape)
numeric = numerical_gradient(f, x, dout)
err_broken = rel_error(batchnorm_backward_without_variance_term(dout, cache)[0], numeric)
err_package = rel_error(batchnorm_backward(dout, cache)[0], numeric)
print(f"random dout: broken {err_broken:.2e}, package {err_package:.2e}")
assert err_broken > 1e-3 and err_package < 1e-7

# %% [markdown]
# The all-ones check does catch a missing **mean** term: without it, dx = istd * (dxhat -
# xhat * mean(dxhat * xhat)) = istd * gamma for dout = 1, not 0.


# %%
def batchnorm_backward_without_mean_term(dout, cache):
    """BROKEN on purpose: dx = istd * (dxhat - xhat * mean(dxhat * xhat)), no mean term."""
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    dxhat = dout * cache.gamma[None, :, None, None]
    var_term = cache.xhat * (dxhat * cache.xhat).mean(axis=(0, 2, 3), keepdims=True)
    dx = (dxhat - var_term) * cache.inv_std[None, :, None, None]
    return dx, dgamma, dbeta


numeric = numerical_gradient(f, x, ones)
dx_broken = batchnorm_backward_without_mean_term(ones, cache)[0]
print("all-ones dout, no mean term: max |dx| =", np.abs(dx_broken).max())
assert np.abs(dx_broken - numeric).max() > 1e-3

# %% [markdown]
# The lesson, which `check_gradients` follows: weight the output with a *random* dout.
#
# ## Batch norm, then ReLU: one layer, two ways
#
# In the network, batch norm is almost always followed by ReLU, and `skscratch.nn.BatchNorm`
# runs both as one layer, `batchnorm_relu_forward/backward`. On the reference backend that is
# the composite of `skscratch.layers`: the two pairs one after the other, their caches nested,
# and a backward that undoes them in reverse order.

# %%
print(inspect.getsource(layers.batchnorm_relu_forward))
print(inspect.getsource(layers.batchnorm_relu_backward))

# %% [markdown]
# The fast backend (`skscratch.fast`, what a network built with `backend="fast"` runs) fuses
# the two into one compiled pass per direction, keeping only x instead of xhat and the output,
# and recomputing from it what the backward needs. The mathematics is the same; let us check
# that both equal `batchnorm_forward` followed by `relu_forward`, backward too, in both modes.

# %%
x = rng.normal(size=(4, 3, 5, 5))
g, b = rng.normal(size=3), rng.normal(size=3)
rm, rv = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
dout = rng.normal(size=x.shape)
for training in (True, False):
    out_bn, mean_bn, var_bn, bn_cache = batchnorm_forward(x, g, b, rm, rv, training=training)
    out_ref, relu_cache = relu_forward(out_bn)
    dx_ref, dg_ref, db_ref = batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)

    for name, ops in [("skscratch.layers", layers), ("skscratch.fast", fast)]:
        out_2, mean_2, var_2, cache_2 = ops.batchnorm_relu_forward(
            x, g, b, rm, rv, training=training
        )
        dx_2, dg_2, db_2 = ops.batchnorm_relu_backward(dout, cache_2)
        pairs = [
            (out_2, out_ref),
            (mean_2, mean_bn),
            (var_2, var_bn),
            (dx_2, dx_ref),
            (dg_2, dg_ref),
            (db_2, db_ref),
        ]
        for theirs, reference in pairs:
            np.testing.assert_allclose(theirs, reference, rtol=1e-10, atol=1e-12)
        print(f"training={training}: {name}.batchnorm_relu_* == batchnorm + relu")

# %% [markdown]
# ## Summary
#
# - Training: normalise with the batch's mean and biased variance, per channel over N (and
#   H, W); update the running statistics with momentum 0.1 and the unbiased variance.
# - Evaluation: normalise with the running statistics; outputs no longer depend on the batch.
# - Backward: dx = istd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), the direct path,
#   the mean term and the variance term.
# - Check gradients with a random upstream gradient: dout = 1 cannot see the variance term.
