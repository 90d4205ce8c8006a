# %% [markdown]
# # 8. The SK unit: Split, Fuse, Select
#
# **Goals.** After this tutorial you can
# - describe the three steps of an SK unit, and give the shape of every array between them;
# - compute the softmax across branches and derive its backward pass from its Jacobian;
# - derive the unit's backward pass, in which every branch output receives gradient along two
#   paths that add;
# - gradient-check the unit, its input and every parameter, against finite differences.
#
# **Prerequisites.** Tutorial 1 (gradients add where a value is used twice), tutorial 2 (the
# softmax and the fully connected layer), tutorials 4 to 7 (grouped and dilated convolution,
# its backward pass, batch norm, gradient checking).
#
# **Time.** About 45 minutes.
#
# The Selective Kernel unit (Li, Wang, Hu, Yang, CVPR 2019) lets every channel choose, image by
# image, how much of a small and how much of a large receptive field it uses. It does that in
# three steps:
#
# 1. **Split**: $M$ convolutions of the same input, branch $m$ a grouped 3x3 convolution with
#    dilation $m$, each followed by batch norm and ReLU: $U_1, \dots, U_M$.
# 2. **Fuse**: add the branches, average each channel over the image, squeeze the $C$ averages
#    to $d$ numbers: $z = \mathrm{ReLU}(\mathrm{BN}(W_\text{fc} s))$.
# 3. **Select**: turn $z$ into $M$ weights per channel that sum to 1 (a softmax across the
#    branches) and mix the branches with them: $V = a_1 U_1 + \dots + a_M U_M$.
#
# This tutorial writes the unit down one operation at a time, in terms of the forward/backward
# pairs of the earlier tutorials, and runs a few CIFAR-10 images through `skscratch.sk`'s
# `sk_unit_forward`. Then it goes backwards: the softmax's Jacobian, the unit's backward pass
# step by step, and a gradient check against finite differences.

# %%
import math

import numpy as np

from skscratch import branch_softmax_backward, branch_softmax_forward, conv2d_forward
from skscratch.assignment.student import check
from skscratch.data import channel_stats, load_sample, normalize
from skscratch.gradcheck import check_sk_unit, numerical_gradient, rel_error
from skscratch.layers import batchnorm_relu_forward
from skscratch.nn import SKUnit
from skscratch.plots import pyplot, show
from skscratch.sk import sk_hidden_size, sk_unit_backward, sk_unit_forward

rng = np.random.default_rng(0)

# %% [markdown]
# ## The input: four CIFAR-10 images through a stem
#
# skscratch ships a sample of CIFAR-10, the first four test images of every class
# (`load_sample`), so that a look at a few images needs no download. We take the first image of
# four classes, normalise them with the per-channel mean and standard deviation of the 40
# sample images, and give them $C = 16$ channels with a 3x3 "stem" convolution (random weights)
# followed by batch norm and ReLU, as at the start of the network.
# Everything is float64, so that later comparisons can be tight.

# %%
sample = load_sample()
print(sample.x.shape, sample.x.dtype, sample.y.shape)  # (40, 3, 32, 32) uint8, (40,)
assert sample.x.shape == (40, 3, 32, 32) and np.all(np.bincount(sample.y, minlength=10) == 4)
classes = ["airplane", "cat", "ship", "frog"]
picks = [int(np.flatnonzero(sample.y == sample.label_names.index(c))[0]) for c in classes]
images = sample.x[picks]  # uint8 (N, 3, 32, 32)
mean, std = channel_stats(sample.x)
x_rgb = normalize(images, mean, std).astype(np.float64)
print(x_rgb.shape)  # (N, 3, H, W) = (4, 3, 32, 32)

C, G, M = 16, 4, 2  # channels, groups, branches
w_stem = rng.normal(0, np.sqrt(2 / 27), size=(C, 3, 3, 3))  # (C_out, C_in, KH, KW)
x, _ = conv2d_forward(x_rgb, w_stem, padding=1)
x, *_ = batchnorm_relu_forward(x, np.ones(C), np.zeros(C), np.zeros(C), np.ones(C))
N, _, H, W = x.shape
print(x.shape)  # (N, C, H, W) = (4, 16, 32, 32): the SK unit's input X

# %% [markdown]
# The unit's parameters come from `skscratch.nn.SKUnit`, which initialises them as the network
# does; we convert them to float64 and take the arrays out as a plain dict. The fused vector
# $z$ has $d = \max(\lfloor C / r \rfloor, L)$ entries. With $C = 16$ and the paper's $r = 16$,
# $\lfloor C / r \rfloor$ is 1; the floor $L$ keeps $z$ from becoming too narrow (the paper uses
# $L = 32$; we use $L = 8$ for a unit this small).

# %%
r, L = 16, 8
d = sk_hidden_size(C, r, L)
unit = SKUnit(C, branches=M, groups=G, r=r, L=L, rng=rng).astype(np.float64)
params = {name: p.data for name, p in unit.params.items()} | unit.buffers
for name, value in params.items():
    print(f"{name:22s} {value.shape}")
assert d == max(C // r, L) == 8
assert params["fc.weight"].shape == (d, C) and params["select.weight"].shape == (M * C, d)

# %% [markdown]
# ## Split
#
# Branch $m$ ($m = 1, 2$) is a grouped 3x3 convolution with dilation $m$ and padding $m$, then
# batch norm and ReLU:
#
# $$ U_m = \mathrm{ReLU}\big(\mathrm{BN}_m(\mathrm{conv}(X, W_m;\ \text{dilation } m,
#    \text{ padding } m,\ G \text{ groups}))\big) \in \mathbb{R}^{N \times C \times H \times W}. $$
#
# A dilated 3x3 kernel places its 9 taps $m$ pixels apart, so branch 2 sees a 5x5 window with the
# parameters and cost of a 3x3 one. Convolving a single bright pixel with an all-ones kernel
# makes the taps visible: the output is 1 wherever a tap can reach the pixel.

# %%
impulse = np.zeros((1, 1, 7, 7))
impulse[0, 0, 3, 3] = 1.0
for dilation in (1, 2):
    reach, _ = conv2d_forward(impulse, np.ones((1, 1, 3, 3)), padding=dilation, dilation=dilation)
    print(f"dilation {dilation}:\n{reach[0, 0].astype(int)}")
# `reach` now holds dilation 2's footprint.
offsets = np.array([-2, 0, 2]) + 3
expected = np.zeros((7, 7))
expected[np.ix_(offsets, offsets)] = 1
np.testing.assert_array_equal(reach[0, 0], expected)  # 9 taps spread over a 5x5 window

# %% [markdown]
# The padding equal to the dilation keeps the size:
# $H_\text{out} = \lfloor (H + 2m - m(3 - 1) - 1) / 1 \rfloor + 1 = H$. Each weight is
# `(C, C // G, 3, 3)`: every output channel sees only the $C/G = 4$ input channels of its own
# group.

# %%
for m in range(M):
    print(f"convs.{m}.weight: {params[f'convs.{m}.weight'].shape}")  # (C, C // G, 3, 3)
    assert params[f"convs.{m}.weight"].shape == (C, C // G, 3, 3) == (16, 4, 3, 3)

# %% [markdown]
# ## Fuse
#
# $$ U = U_1 + U_2 \in \mathbb{R}^{N \times C \times H \times W}, \qquad
#    s_{nc} = \frac{1}{HW} \sum_{h,w} U_{nchw} \in \mathbb{R}^{N \times C}, \qquad
#    z = \mathrm{ReLU}\big(\mathrm{BN}(s W_\text{fc}^\top)\big) \in \mathbb{R}^{N \times d}, $$
#
# with $W_\text{fc}$ of shape $(d, C)$ and no bias: $s$ is one number per channel, the global
# context. The batch norm here runs over a batch of $N$ vectors: its statistics are per feature
# of $z$, over the $N$ images. In the pairs: `global_avg_pool_forward`, `linear_forward`,
# `batchnorm_forward`, `relu_forward`.
#
# ## Select
#
# $$ \ell = z W_\text{sel}^\top \in \mathbb{R}^{N \times MC}
#    \text{ viewed as } (N, M, C), \qquad W_\text{sel} \in \mathbb{R}^{MC \times d}, $$
#
# $$ a_{nmc} = \frac{e^{\ell_{nmc}}}{\sum_k e^{\ell_{nkc}}}, \qquad
#    V_{nchw} = \sum_m a_{nmc} \, U_{m,nchw}. $$
#
# The first $C$ logits belong to branch 1. The softmax runs over the branch axis separately for
# every image and channel, so every channel of every image gets its own mix; $a_m$ is broadcast
# over $H$ and $W$.
#
# ## The softmax across branches
#
# As in tutorial 2, subtracting the largest of a channel's $M$ logits first changes nothing and
# keeps `exp` from overflowing. Backwards, for one image and channel, differentiating
# $a_m = e^{\ell_m} / \sum_j e^{\ell_j}$ gives
#
# $$ \frac{\partial a_m}{\partial \ell_k} = a_m (\delta_{mk} - a_k), $$
#
# an $M \times M$ Jacobian $J$ for every $(n, c)$. Backward multiplies the upstream gradient by
# it, and the sum simplifies:
#
# $$ \frac{\partial L}{\partial \ell_k} = \sum_m \frac{\partial L}{\partial a_m} J_{mk}
#    = a_k \Big( \frac{\partial L}{\partial a_k} - \sum_m \frac{\partial L}{\partial a_m} a_m
#    \Big). $$
#
# ### Your turn: the softmax across branches (assignment exercise `branch_softmax`)
#
# In a student copy (`python -m skscratch assignment make`), the bodies of
# `branch_softmax_forward` and `branch_softmax_backward` in `skscratch/activations.py` are
# yours to write, from the formulas above. The softmax runs over axis 1 of `(N, M, C)`, not
# over the last axis, and so does the backward's sum; keep the dimension (`keepdims=True`) so
# that it broadcasts. The cell below runs the exercise's visible checks on them; the rest of the
# chapter uses your functions.

# %%
assert check("branch_softmax") == 0, "exercise branch_softmax: see the failures above"

# %% [markdown]
# On random logits for our four images, the weights sum to 1 over the branches, and adding the
# same number to all $M$ logits of a channel does not change them:

# %%
logits = 2.0 * rng.standard_normal((N, M, C))  # (N, M, C)
a, softmax_cache = branch_softmax_forward(logits)
print(a.shape)  # (N, M, C) = (4, 2, 16)
np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # sums to 1 over M
shift = 5.0 * rng.standard_normal((N, 1, C))  # one number per image and channel
np.testing.assert_allclose(branch_softmax_forward(logits + shift)[0], a, atol=1e-12)

# %% [markdown]
# The Jacobian of one image and channel, by finite differences of the forward pass, is the
# formula's, and the backward pass agrees with finite differences for all of them:

# %%
n0, c0 = 0, 3
J_numeric = np.empty((M, M))
for k in range(M):
    step = np.zeros_like(logits)
    step[n0, k, c0] = 1e-6
    plus = branch_softmax_forward(logits + step)[0][n0, :, c0]
    minus = branch_softmax_forward(logits - step)[0][n0, :, c0]
    J_numeric[:, k] = (plus - minus) / 2e-6  # column k: d a / d l_k
a0 = a[n0, :, c0]
J = np.diag(a0) - np.outer(a0, a0)  # J[m, k] = a_m (delta_mk - a_k)
print(J.round(4))
np.testing.assert_allclose(J_numeric, J, atol=1e-9)

da = rng.standard_normal(a.shape)  # an upstream gradient (N, M, C)
dl = branch_softmax_backward(da, softmax_cache)
np.testing.assert_allclose(dl[n0, :, c0], da[n0, :, c0] @ J, rtol=1e-12, atol=1e-14)
dl_numeric = numerical_gradient(lambda lg: branch_softmax_forward(lg)[0], logits, da)
err = rel_error(dl, dl_numeric)
print(f"branch softmax backward vs finite differences: {err:.1e}")
assert err < 1e-8

# %% [markdown]
# Every row of $J$ sums to zero ($\sum_k a_m(\delta_{mk} - a_k) = a_m - a_m$): adding the same
# number to all $M$ logits of a channel does not change the softmax, as we saw. So the gradient
# of the logits sums to zero over the branches, whatever the upstream gradient is. For $M = 2$
# only the difference $\ell_2 - \ell_1$ matters.

# %%
np.testing.assert_allclose(J.sum(axis=-1), 0.0, atol=1e-15)
np.testing.assert_allclose(dl.sum(axis=1), 0.0, atol=1e-14)

# %% [markdown]
# ## The unit's backward pass
#
# `sk_unit_backward` undoes the forward in reverse: Select, then Fuse, then Split. Write $dY$
# for $\partial L / \partial Y$ and start from the upstream gradient $dV$, shaped like $V$.
#
# **Select, backwards.** $V = \sum_m a_m U_m$ is a product of two things that both depend on the
# input, so it passes gradient to each. The weights' gradient sums over the plane, the branches'
# is scaled by the weights:
#
# $$ da_{nmc} = \sum_{h,w} dV_{nchw} \, U_{m,nchw}, \qquad
#    dU_m^\text{direct} = a_m \, dV. $$
#
# Then the softmax's backward gives $d\ell$ `(N, M, C)`, reshaped to `(N, M*C)`, and the fully
# connected layer's backward gives $dz$ `(N, d)` and $dW_\text{sel}$ `(M*C, d)`.
#
# **Fuse, backwards.** Through the ReLU, the batch norm ($d\gamma$ and $d\beta$ of `fc_bn`), the
# fully connected layer ($ds$ `(N, C)` and $dW_\text{fc}$ `(d, C)`) and the average pool, which
# gives every pixel an equal share of its channel's gradient:
#
# $$ dU_{nchw} = \frac{1}{HW} \, ds_{nc}. $$
#
# **Split, backwards.** $U = U_1 + \dots + U_M$, and $\partial U / \partial U_m$ is the identity,
# so every branch receives the same $dU$. Every branch output $U_m$ thus reaches $V$ **twice**:
#
# - **directly**, in $V = \sum_m a_m U_m$: this path gives $a_m \, dV$;
# - **through the fused statistics**: $U_m$ is part of $U$, which decides $s$, $z$, the logits
#   and hence every attention weight; this path gives every branch the same $dU$.
#
# The chain rule adds the two (tutorial 1):
#
# $$ dU_m = a_m \, dV + dU. $$
#
# Then each branch's ReLU, batch norm ($d\gamma_m$, $d\beta_m$) and convolution ($dW_m$, and a
# gradient of $X$). All the branches read the same $X$, so their gradients of $X$ add as well:
# $dX = \sum_m dX_m$.
#
# ### Your turn: the SK unit (assignment exercise `sk_unit`)
#
# In a student copy, the bodies of `sk_unit_forward` and `sk_unit_backward` in
# `skscratch/sk.py` are yours to write, from the steps above and the pairs of the earlier
# exercises. Keep in the `SKCache` every cache the backward pass needs, add the two paths of
# every $U_m$ before its ReLU's backward, and add the branches' gradients of $X$. The cell below
# runs the exercise's visible checks on them; the rest of the chapter uses your functions.

# %%
assert check("sk_unit") == 0, "exercise sk_unit: see the failures above"

# %% [markdown]
# ## The unit on four images
#
# `sk_unit_forward` reads $M$ from the parameter names, checks every shape, and returns $V$ and
# a cache; the cache keeps the branch outputs as `cache.branches` and the attention as
# `cache.a`. Since the weights of a channel are positive and sum to 1, every value of $V$ lies
# between the branch outputs it mixes.

# %%
V, cache = sk_unit_forward(x, params, groups=G)
U, a = cache.branches, cache.a
print(V.shape)  # (N, C, H, W) = (4, 16, 32, 32)
for m in range(M):
    print(f"U_{m + 1}: {U[m].shape}")  # (N, C, H, W) = (4, 16, 32, 32)
print(a.shape)  # (N, M, C) = (4, 2, 16)
assert V.shape == U[0].shape == U[1].shape == (4, 16, 32, 32) and a.shape == (4, 2, 16)
np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # sums to 1 over M
assert np.all(np.minimum(U[0], U[1]) - 1e-12 <= V) and np.all(V <= np.maximum(U[0], U[1]) + 1e-12)
print("attention of branch 1, image 0, first 6 channels:", a[0, 0, :6].round(3))

# %% [markdown]
# ## What the attention looks like
#
# For each image, the bars below split every channel's weight between the 3x3 branch and the
# dilated (5x5 field) branch; each bar has height 1. The weights are random, so the choices mean
# nothing yet, but they already differ from image to image, because they are computed from the
# image; training gives them a meaning.

# %%
plt = pyplot()
fig, axes = plt.subplots(N, 2, figsize=(10, 2.0 * N), gridspec_kw={"width_ratios": [1, 5]})
channels = np.arange(C)
for n in range(N):
    axes[n, 0].imshow(images[n].transpose(1, 2, 0))  # (H, W, 3) for imshow
    axes[n, 0].set_title(classes[n], fontsize=10)
    axes[n, 0].axis("off")
    ax = axes[n, 1]
    ax.bar(channels, a[n, 0], color="tab:blue", label="a_1: 3x3 branch")
    ax.bar(channels, a[n, 1], bottom=a[n, 0], color="tab:orange", label="a_2: dilated branch")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set(xlim=(-0.6, C - 0.4), ylim=(0, 1), ylabel="attention", xticks=channels)
axes[-1, 1].set_xlabel("channel c")
fig.suptitle("SK attention per channel (random weights): a_1 + a_2 = 1 for every channel")
fig.tight_layout(rect=(0, 0.04, 1, 1))
fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="lower center", ncol=2)
show(fig, "08_attention_per_channel")

# %% [markdown]
# ## The two paths, measured
#
# The fused path is spread evenly over the plane (the average pool gives every pixel
# $ds / (HW)$ of its channel), so per pixel it is much smaller than the direct one. It is not
# negligible: drop it, and the gradient of $X$ is plainly wrong. Finite differences show it
# without any backward pass. Of two functions of $X$, the unit itself has both paths; the same
# unit with its attention frozen at the values of `cache.a` has only the direct one (its
# branches still move with $X$, its weights no longer do). On 40 sampled entries of $X$, the
# first agrees with `sk_unit_backward` and the second does not:

# %%
dV = rng.standard_normal(V.shape)  # an upstream gradient (N, C, H, W)
dx, grads = sk_unit_backward(dV, cache)
print(dx.shape)  # like X: (N, C, H, W) = (4, 16, 32, 32)


def unit_output(x_):
    return sk_unit_forward(x_, params, groups=G)[0]


def frozen_attention(x_):
    branches = sk_unit_forward(x_, params, groups=G)[1].branches
    return sum(a[:, m, :, None, None] * branches[m] for m in range(M))  # a_m (N, C, 1, 1)


entries = rng.choice(x.size, 40, replace=False)
both_paths = numerical_gradient(unit_output, x, dV, indices=entries).reshape(-1)[entries]
direct_only = numerical_gradient(frozen_attention, x, dV, indices=entries).reshape(-1)[entries]
err_both = rel_error(dx.reshape(-1)[entries], both_paths)
err_without = rel_error(direct_only, both_paths)
fused_share = both_paths - direct_only
print(f"sk_unit_backward vs finite differences of the unit: {err_both:.1e}")
print(f"dX without the fused path: relative error {err_without:.2g}")
print(f"|direct| = {np.linalg.norm(direct_only):.3g}, |fused| = {np.linalg.norm(fused_share):.3g}")
assert err_both < 1e-6 and err_without > 1e-3
assert np.linalg.norm(fused_share) < np.linalg.norm(direct_only)

# %% [markdown]
# ## Gradient check
#
# Finally the unit against centred finite differences, for the input and every parameter:
# `check_sk_unit` builds a random float64 unit ($N = 4$ images, $C = 8$, $G = 4$, a 6x5 plane),
# draws a random upstream gradient, and returns the largest relative error per input. We check
# $M = 2$ and $M = 3$ (three branches: dilations 1, 2 and 3), the latter with stride 2. (With
# $N = 2$ the fused batch norm maps each feature to about $\pm 1$ whatever its input, and the
# check would measure only rounding; hence $N = 4$.)

# %%
check_rng = np.random.default_rng(1)
for branches, stride in [(2, 1), (3, 2)]:
    errors = check_sk_unit(check_rng, branches=branches, stride=stride)
    print(f"M = {branches}, stride {stride}:")
    for name, err in errors.items():
        print(f"    {name:18s} {err:.1e}")
    # x; per branch a convolution weight and a BN scale and shift; fc, fc_bn's two, select
    assert len(errors) == 1 + 3 * branches + 4
    assert max(errors.values()) < 1e-6

# %% [markdown]
# ## Summary
#
# - Split: $M$ grouped 3x3 convolutions with dilations $1, \dots, M$ (padding equal to the
#   dilation keeps the size), each with BN and ReLU, give $U_m$ `(N, C, H', W')`; dilation 2
#   spreads 9 taps over a 5x5 window.
# - Fuse: $s = \mathrm{GAP}(U_1 + \dots + U_M)$ `(N, C)`,
#   $z = \mathrm{ReLU}(\mathrm{BN}(W_\text{fc} s))$ `(N, d)`, $d = \max(\lfloor C/r \rfloor, L)$:
#   8 for this unit.
# - Select: logits `(N, M, C)`, a softmax over $M$ (weights summing to 1, unchanged by a shift
#   of a channel's logits), $V = \sum_m a_m U_m$, which lies between the branch outputs.
# - Backward: the softmax's Jacobian is $a_m(\delta_{mk} - a_k)$, its rows sum to 0, and the
#   backward pass agrees with finite differences to $10^{-8}$. Each $U_m$ gets $a_m \, dV$
#   directly plus the fused-statistics gradient $dU$ shared by all branches; without the
#   fused path $dX$ is off by more than $10^{-3}$, though the path is the smaller of the two.
# - The whole unit passes a gradient check below $10^{-6}$ for $M = 2$ and for $M = 3$ with
#   stride 2.
#
# Next: tutorial 9 puts the SK unit into a residual bottleneck block and a network, and
# tutorial 11 trains that network on CIFAR-10.
#
# ## Exercises
#
# 1. SKNet-50 (the paper's $r = 16$, $L = 32$) has SK units of $C = 128, 256, 512$ and $1024$
#    channels. What is $d$ for each?

# %%
# BEGIN SOLUTION
d_sknet50 = [max(c // 16, 32) for c in (128, 256, 512, 1024)]  # 32, 32, 32, 64
# END SOLUTION
assert d_sknet50 == [sk_hidden_size(c, 16, 32) for c in (128, 256, 512, 1024)]

# %% [markdown]
# 2. How many parameters (not counting the running statistics) does this chapter's unit have,
#    with $C = 16$, $G = 4$, $M = 2$ and $d = 8$? Count them by hand from the shapes.

# %%
# BEGIN SOLUTION
# convs M * C * (C/G) * 3 * 3, bns M * 2C, fc d * C, fc_bn 2d, select M*C * d
n_unit = 2 * 16 * 4 * 3 * 3 + 2 * 2 * 16 + 8 * 16 + 2 * 8 + 2 * 16 * 8
# END SOLUTION
assert n_unit == sum(p.data.size for p in unit.params.values())

# %% [markdown]
# 3. One channel, $M = 2$, with logits $(\ln 3, 0)$, so $a = (3/4, 1/4)$, and upstream gradient
#    $\partial L / \partial a = (1, 3)$. Compute $\partial L / \partial \ell$ by hand.

# %%
# BEGIN SOLUTION
dl_by_hand = np.array([0.75 * (1 - 1.5), 0.25 * (3 - 1.5)])  # sum_m da_m a_m = 0.75 + 0.75
# END SOLUTION
_, one_cache = branch_softmax_forward(np.array([[[math.log(3)], [0.0]]]))  # (1, M, 1)
np.testing.assert_allclose(
    branch_softmax_backward(np.array([[[1.0], [3.0]]]), one_cache)[0, :, 0], dl_by_hand
)

# %% [markdown]
# 4. With $M = 2$, $a_2 = 1 / (1 + e^{-(\ell_2 - \ell_1)})$. By how much must the dilated
#    branch's logit exceed the other for it to get 90% of a channel's weight?

# %%
# BEGIN SOLUTION
gap_90 = math.log(0.9 / 0.1)
# END SOLUTION
assert abs(branch_softmax_forward(np.array([[[0.0], [gap_90]]]))[0][0, 1, 0] - 0.9) < 1e-12

# %% [markdown]
# 5. With stride 2 (as in the first block of a stage), what shape does $V$ have for this
#    chapter's input $X$ of shape (4, 16, 32, 32)? Use the output-size formula of tutorial 3
#    for a branch with dilation $m$ and padding $m$.

# %%
# BEGIN SOLUTION
v_stride2 = (4, 16, 16, 16)  # (32 + 2m - m * (3 - 1) - 1) // 2 + 1 = 31 // 2 + 1 for every m
# END SOLUTION
assert sk_unit_forward(x, params, groups=G, stride=2)[0].shape == v_stride2
