# %% [markdown]
# # 6. Batch normalisation, forward and backward
#
# **Goals.** After this tutorial you can
# - normalise a batch per channel, for `(N, C)` and `(N, C, H, W)` inputs, and keep the running
#   statistics as PyTorch does (momentum 0.1, unbiased variance);
# - derive the training-mode backward pass step by step through the mean and the variance, and
#   simplify it to three terms;
# - say what changes in evaluation mode, forward and backward;
# - explain why a gradient check with an all-ones upstream gradient can pass a wrong backward.
#
# **Prerequisites.** Tutorial 1 (backward through a graph; gradients add where a value is used
# twice; finite differences); mean and variance.
#
# **Time.** About 45 minutes, more if you write the assignment exercise `batchnorm`.
#
# In an SK network batch norm follows every convolution: each branch of the SK unit is
# conv -> BN -> ReLU, and the fuse step's fully connected layer is followed by BN and ReLU too.
# This tutorial builds the forward pass from its formulas, derives the backward pass step by
# step, and then looks at two things that trip people up: training versus evaluation mode, and
# why a gradient check with an all-ones upstream gradient can pass a wrong backward pass.

# %%
import inspect
import math

import numpy as np

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    fast,
    layers,
    relu_backward,
    relu_forward,
)
from skscratch.assignment.student import check
from skscratch.gradcheck import check_gradients, numerical_gradient, rel_error
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## The forward pass in training mode
#
# For $x$ of shape `(N, C)`, each channel $c$ is normalised with the statistics of its $m = N$
# values in the batch:
#
# $$ \mu = \frac{1}{m} \sum_i x_i, \qquad
#    \sigma^2 = \frac{1}{m} \sum_i (x_i - \mu)^2 \quad
#    \text{(biased: divide by } m \text{, not } m - 1\text{)}, $$
#
# $$ \hat{x}_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}} \quad
#    (\epsilon = 10^{-5}), \qquad \mathrm{out}_i = \gamma \hat{x}_i + \beta. $$
#
# $\gamma$ and $\beta$ (`gamma`, `beta`), shape `(C,)`, are learned; they let the network undo
# the normalisation if it wants to. `batchnorm_forward` also takes the running statistics
# (below) and returns their updated values, without modifying the arrays passed in.
#
# `batchnorm_forward` is the first half of the assignment exercise `batchnorm`: in a student
# copy its body in `skscratch/batchnorm.py` is yours to write, from these formulas (the helper
# `running_stats` updates the running statistics for you; in evaluation mode, below, the
# running statistics take the place of $\mu$ and $\sigma^2$). The rest of the chapter runs on
# it; the "Your turn" cell after the backward pass's derivation runs the exercise's checks on
# both halves.

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
# Each column of $\hat{x}$ has mean 0 and (biased) variance $\sigma^2 / (\sigma^2 + \epsilon)$,
# just under 1:

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
# *unbiased* batch variance (divide by $m - 1$), although normalising used the biased one.
# With $\mu_\mathrm{run}$ and $\sigma^2_\mathrm{run}$ for `running_mean` and `running_var`:
#
# $$ \mu_\mathrm{run} \leftarrow 0.9\, \mu_\mathrm{run} + 0.1\, \mu, \qquad
#    \sigma^2_\mathrm{run} \leftarrow 0.9\, \sigma^2_\mathrm{run}
#    + 0.1\, \sigma^2 \frac{m}{m - 1}. $$

# %%
np.testing.assert_allclose(new_mean, 0.9 * running_mean + 0.1 * mu, rtol=1e-12)
np.testing.assert_allclose(new_var, 0.9 * running_var + 0.1 * x.var(axis=0, ddof=1), rtol=1e-12)
assert np.all(running_mean == 0) and np.all(running_var == 1)  # the inputs are untouched

# %% [markdown]
# ## Images: (N, C, H, W)
#
# For images the statistics of channel $c$ run over the batch *and* all pixels: $m = N H W$
# values per channel, axes `(0, 2, 3)`. So BatchNorm2d is the `(N, C)` version applied to a
# `(N*H*W, C)` matrix of "pixels by channels". Let us check exactly that.

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
# Take one channel (everything is per channel) with $m$ values. The forward pass as a graph of
# small steps; note that $x$ enters three times, directly and through $\mu$ and (via $x_c$)
# $\sigma^2$:
#
# $$ \mu = \tfrac{1}{m} \textstyle\sum_i x_i, \qquad x_c = x - \mu, \qquad
#    \sigma^2 = \tfrac{1}{m} \textstyle\sum_i x_{c,i}^2, \qquad
#    r = (\sigma^2 + \epsilon)^{-1/2}, \qquad \hat{x} = x_c\, r, \qquad
#    \mathrm{out} = \gamma \hat{x} + \beta. $$
#
# ($r$, the inverse standard deviation, is `istd`, or `inv_std` in the cache.) Backward, given
# $\delta = \partial L / \partial\, \mathrm{out}$ and writing $dv$ for $\partial L / \partial v$,
# we walk the graph in reverse:
#
# 1. $d\beta = \sum_i \delta_i$, $\; d\gamma = \sum_i \delta_i \hat{x}_i$,
#    $\; d\hat{x}_i = \gamma\, \delta_i$.
# 2. $\hat{x} = x_c\, r$, and $r$ is one number for the whole channel, so
#    $dr = \sum_i d\hat{x}_i\, x_{c,i}$, and the direct part of $x_c$'s gradient is
#    $d\hat{x}_i\, r$.
# 3. $r = (\sigma^2 + \epsilon)^{-1/2}$, so
#    $d\sigma^2 = dr \cdot (-\tfrac{1}{2}) (\sigma^2 + \epsilon)^{-3/2}
#    = -\tfrac{1}{2}\, r^3 \sum_i d\hat{x}_i\, x_{c,i}$.
# 4. $\sigma^2 = \frac{1}{m} \sum_i x_{c,i}^2$, so each $x_{c,i}$ gets
#    $d\sigma^2 \cdot 2 x_{c,i} / m$ more:
#    $dx_{c,i} = d\hat{x}_i\, r + d\sigma^2 \cdot 2 x_{c,i} / m$.
# 5. $x_c = x - \mu$: $x$ gets $dx_c$ directly, and $\mu$ gets $d\mu = -\sum_i dx_{c,i}$.
# 6. $\mu = \frac{1}{m} \sum_i x_i$, so every $x_i$ gets $d\mu / m$:
#    $dx_i = dx_{c,i} + d\mu / m$.
#
# Now simplify, using $x_c\, r = \hat{x}$ and $\sum_i \hat{x}_i = 0$, and writing
# $\overline{v} = \frac{1}{m} \sum_i v_i$ for a mean over the channel. Step 4 becomes
# $dx_{c,i} = r\, (d\hat{x}_i - \hat{x}_i\, \overline{d\hat{x}\, \hat{x}})$; then
# $d\mu = -r \sum_i d\hat{x}_i + r\, \overline{d\hat{x}\, \hat{x}} \sum_i \hat{x}_i
# = -r \sum_i d\hat{x}_i$, and
#
# $$ dx_i = r \left( d\hat{x}_i - \overline{d\hat{x}}
#    - \hat{x}_i\, \overline{d\hat{x}\, \hat{x}} \right) $$
#
# Three terms: the direct path, the **mean term** (through $\mu$) and the **variance term**
# (through $\sigma^2$).
#
# ### Your turn: `batchnorm_backward` (assignment exercise `batchnorm`)
#
# In a student copy (`python -m skscratch assignment make`), the body of `batchnorm_backward` in
# `skscratch/batchnorm.py` is yours to write, from the formulas above, for `(N, C)` and
# `(N, C, H, W)` alike (the channel means run over axes `(0,)` or `(0, 2, 3)`). The cache holds
# $\hat{x}$, $\gamma$ and $r$, which is all the simplified formula needs; in evaluation mode
# ($\mu$ and $\sigma^2$ fixed, below) only the direct path is left. The cell below runs the
# exercise's visible checks, on `batchnorm_forward` and on `batchnorm_backward` in both modes;
# the rest of the chapter uses your functions.

# %%
assert check("batchnorm") == 0, "exercise batchnorm: see the failures above"

# %% [markdown]
# The backward pass agrees with finite differences (`check_gradients` weights the output with a
# random upstream gradient and returns the largest relative error per input):

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
# In evaluation mode $\mu$ and $\sigma^2$ are constants, so only the direct path is left:
# $dx = d\hat{x} / \sqrt{\sigma^2_\mathrm{run} + \epsilon}$. The gradient check covers that
# case too.

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
# A tempting gradient check sums the output, i.e. uses $\delta = 1$. For batch norm that is a
# blind spot: $\sum \mathrm{out} = \sum (\gamma \hat{x} + \beta) = m \sum_c \beta_c$,
# because every channel of $\hat{x}$ sums to 0, whatever $x$ is. So the true $dx$ is 0. And
# with $\delta = 1$, $d\hat{x} = \gamma$ is constant within a channel, so the variance term
# $\hat{x}\, \overline{d\hat{x}\, \hat{x}} = \gamma\, \hat{x}\, \overline{\hat{x}} = 0$ as
# well: a backward that forgets the variance term returns the same 0.
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
# With $\delta = 1$ the true gradient is 0, the finite differences give 0 up to rounding (below
# 1e-7), and the broken backward gives 0 too: the check passes. (`rel_error` is no use here,
# since everything is zero; we compare with an absolute tolerance.)

# %%
ones = np.ones_like(x)
numeric = numerical_gradient(f, x, ones)
dx_broken = batchnorm_backward_without_variance_term(ones, cache)[0]
print("max |numeric|", np.abs(numeric).max(), " max |broken dx|", np.abs(dx_broken).max())
np.testing.assert_allclose(dx_broken, numeric, atol=1e-7)
np.testing.assert_allclose(batchnorm_backward(ones, cache)[0], numeric, atol=1e-7)

# %% [markdown]
# With a random `dout` the broken backward is far off, and `batchnorm_backward` is right:

# %%
dout = rng.normal(size=x.shape)
numeric = numerical_gradient(f, x, dout)
err_broken = rel_error(batchnorm_backward_without_variance_term(dout, cache)[0], numeric)
err_package = rel_error(batchnorm_backward(dout, cache)[0], numeric)
print(f"random dout: broken {err_broken:.2e}, package {err_package:.2e}")
assert err_broken > 1e-3 and err_package < 1e-7

# %% [markdown]
# The all-ones check does catch a missing **mean** term: without it,
# $dx = r\, (d\hat{x} - \hat{x}\, \overline{d\hat{x}\, \hat{x}}) = r \gamma$ for
# $\delta = 1$, not 0.


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
# The lesson, which `check_gradients` follows: weight the output with a *random* `dout`.
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
# the two into one compiled pass per direction, keeping only $x$ instead of $\hat{x}$ and the
# output, and recomputing from it what the backward needs. The mathematics is the same; let us check
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
# - Training: normalise with the batch's mean and biased variance, per channel over $N$ (and
#   $H$, $W$): each channel of $\hat{x}$ has mean 0 and variance $\sigma^2/(\sigma^2 +
#   \epsilon)$. BatchNorm2d is the `(N, C)` version on a `(N*H*W, C)` matrix.
# - The running statistics move with momentum 0.1 and the unbiased variance; after 40 batches
#   they were within 0.2 of the true means and 10% of the true standard deviations.
# - Evaluation: normalise with the running statistics; outputs no longer depend on the batch.
# - Backward: $dx = r\, (d\hat{x} - \overline{d\hat{x}} - \hat{x}\,
#   \overline{d\hat{x}\, \hat{x}})$, the direct path, the mean term and the variance term;
#   in evaluation mode only the direct path. Finite differences agree to better than 1e-7 in
#   both modes.
# - Check gradients with a random upstream gradient: $\delta = 1$ cannot see the variance term
#   (the broken backward passed it; with a random `dout` its error was above 1e-3).
# - Batch norm followed by ReLU, as the reference composite and as the fast backend's fused
#   pass, equals the two pairs one after the other to 1e-10, in both modes.
#
# ## Exercises
#
# 1. A batch of two values in one channel, $x = (3, 1)$, with $\gamma = 2$ and $\beta = 0.5$.
#    Compute the training-mode output by hand.

# %%
x_two = np.array([[3.0], [1.0]])  # (N, C) = (2, 1)
gamma_two, beta_two = np.array([2.0]), np.array([0.5])
# BEGIN SOLUTION
r_two = 1 / math.sqrt(1.0 + 1e-5)  # mu = 2, var = ((3 - 2)^2 + (1 - 2)^2) / 2 = 1
out_two = np.array([[0.5 + 2 * r_two], [0.5 - 2 * r_two]])
# END SOLUTION
forward_two = batchnorm_forward(x_two, gamma_two, beta_two, np.zeros(1), np.ones(1))
np.testing.assert_allclose(forward_two[0], out_two, rtol=1e-12)

# %% [markdown]
# 2. For the same batch and an upstream gradient $\delta = (1, 3)$, compute $d\gamma$ and
#    $d\beta$ by hand.

# %%
dout_two = np.array([[1.0], [3.0]])
# BEGIN SOLUTION
dbeta_two = 1.0 + 3.0
dgamma_two = 1.0 * r_two + 3.0 * -r_two  # xhat = (r, -r)
# END SOLUTION


def out_of_two(**changed):
    args = {"gamma": gamma_two, "beta": beta_two} | changed
    return batchnorm_forward(x_two, args["gamma"], args["beta"], np.zeros(1), np.ones(1))[0]


dgamma_num = numerical_gradient(lambda v: out_of_two(gamma=v), gamma_two, dout_two)
dbeta_num = numerical_gradient(lambda v: out_of_two(beta=v), beta_two, dout_two)
assert rel_error(np.array([dgamma_two]), dgamma_num) < 1e-8
assert rel_error(np.array([dbeta_two]), dbeta_num) < 1e-8

# %% [markdown]
# 3. And $dx$? With two values per channel, $\hat{x} = (r, -r)$ whatever $x$ is (as long as the
#    two differ), so the output hardly depends on $x$. Work out $dx$ exactly from the
#    three-term formula, with $r = 1/\sqrt{1 + 10^{-5}}$.

# %%
# BEGIN SOLUTION
dxhat_two = 2.0 * dout_two  # gamma * delta = (2, 6), mean 4
xhat_two = np.array([[r_two], [-r_two]])
mean_dxhat_xhat = (2.0 * r_two - 6.0 * r_two) / 2  # -2r
dx_two = r_two * (dxhat_two - 4.0 - xhat_two * mean_dxhat_xhat)  # -2 r (1 - r^2) * (1, -1)
# END SOLUTION
np.testing.assert_allclose(batchnorm_backward(dout_two, forward_two[3])[0], dx_two, rtol=1e-8)
assert np.abs(dx_two).max() < 1e-4  # a hundred-thousandth of the upstream gradient

# %% [markdown]
# 4. In evaluation mode, with $\gamma = 2$, running variance 3 and running mean 0, what is
#    $dx$ for $\delta = (1, 3)$?

# %%
# BEGIN SOLUTION
dx_eval_two = np.array([[1.0], [3.0]]) * 2.0 / math.sqrt(3.0 + 1e-5)
# END SOLUTION
numeric = numerical_gradient(
    lambda v: batchnorm_forward(
        v, gamma_two, beta_two, np.zeros(1), np.array([3.0]), training=False
    )[0],
    x_two,
    dout_two,
)
assert rel_error(dx_eval_two, numeric) < 1e-8

# %% [markdown]
# 5. The running mean starts at 0, and ten batches in a row all have mean exactly 5. What is
#    the running mean after them (momentum 0.1)?

# %%
# BEGIN SOLUTION
after_ten = 5 * (1 - 0.9**10)
# END SOLUTION
batch_of_5 = np.array([[4.0], [6.0]])  # mean exactly 5
rmean_5, rvar_5 = np.zeros(1), np.ones(1)
for _ in range(10):
    _, rmean_5, rvar_5, _ = batchnorm_forward(batch_of_5, gamma_two, beta_two, rmean_5, rvar_5)
assert math.isclose(rmean_5[0], after_ten, rel_tol=1e-12)
