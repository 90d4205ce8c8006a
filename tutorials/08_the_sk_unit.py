# %% [markdown]
# # 8. The SK unit: Split, Fuse, Select
#
# The Selective Kernel unit (Li, Wang, Hu, Yang, CVPR 2019) lets every channel choose, image by
# image, how much of a small and how much of a large receptive field it uses. It does that in
# three steps:
#
# 1. **Split**: M convolutions of the same input, branch m a grouped 3x3 convolution with
#    dilation m, each followed by batch norm and ReLU: `U_1, ..., U_M`.
# 2. **Fuse**: add the branches, average each channel over the image, squeeze the C averages
#    to d numbers: `z = ReLU(BN(W_fc s))`.
# 3. **Select**: turn z into M weights per channel that sum to 1 (a softmax across the
#    branches) and mix the branches with them: `V = a_1 * U_1 + ... + a_M * U_M`.
#
# This tutorial runs a few CIFAR-10 images through the unit one operation at a time, with the
# forward/backward pairs of the earlier tutorials, and checks that the result is exactly what
# `skscratch.sk.sk_unit_forward` computes. Then it goes backwards: the softmax's Jacobian, the
# unit's backward pass step by step, and a gradient check against finite differences.

# %%
import inspect

import numpy as np

from skscratch import (
    batchnorm_backward,
    batchnorm_forward,
    branch_softmax_backward,
    branch_softmax_forward,
    conv2d_backward,
    conv2d_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from skscratch.data import channel_stats, load_cifar10, normalize
from skscratch.gradcheck import check_sk_unit, numerical_gradient, rel_error
from skscratch.layers import batchnorm_relu_backward, batchnorm_relu_forward
from skscratch.nn import SKUnit
from skscratch.plots import pyplot, show
from skscratch.sk import sk_hidden_size, sk_unit_backward, sk_unit_forward

rng = np.random.default_rng(0)

# %% [markdown]
# ## The input: four CIFAR-10 images through a stem
#
# We take the first test image of four classes, normalise them with the per-channel mean and
# standard deviation of the first 10,000 training images, and give them C = 16 channels with a
# 3x3 "stem" convolution (random weights) followed by batch norm and ReLU, as at the start of
# the network.
# Everything is float64, so that later comparisons can be tight.

# %%
data = load_cifar10()
classes = ["airplane", "cat", "ship", "frog"]
picks = [int(np.flatnonzero(data.y_test == data.label_names.index(c))[0]) for c in classes]
images = data.x_test[picks]  # uint8 (N, 3, 32, 32)
mean, std = channel_stats(data.x_train[:10000])
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
# does; we convert them to float64 and take the arrays out as a plain dict. The fused vector z
# has `d = max(C // r, L)` entries. With C = 16 and the paper's r = 16, C // r is 1; the floor
# L keeps z from becoming too narrow (the paper uses L = 32; we use L = 8 for a unit this small).

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
# Branch m (m = 1, 2) is a grouped 3x3 convolution with dilation m and padding m, then batch norm
# and ReLU:
#
#     U_m = ReLU(BN_m(conv(X, W_m, dilation=m, padding=m, groups=G)))       (N, C, H, W)
#
# A dilated 3x3 kernel places its 9 taps `m` pixels apart, so branch 2 sees a 5x5 window with the
# parameters and cost of a 3x3 one. Convolving a single bright pixel with an all-ones kernel makes
# the taps visible: the output is 1 wherever a tap can reach the pixel.

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
# The padding equal to the dilation keeps the size: `H_out = (H + 2m - m*(3 - 1) - 1) // 1 + 1 =
# H`. Each weight is `(C, C // G, 3, 3)`: every output channel sees only the C/G = 4 input
# channels of its own group.

# %%
U, split_caches = [], []
for m in range(M):
    dilation = m + 1
    u, conv_cache = conv2d_forward(
        x, params[f"convs.{m}.weight"], padding=dilation, dilation=dilation, groups=G
    )
    gamma, beta = params[f"bns.{m}.weight"], params[f"bns.{m}.bias"]
    running = params[f"bns.{m}.running_mean"], params[f"bns.{m}.running_var"]
    u, _, _, bn_cache = batchnorm_relu_forward(u, gamma, beta, *running)
    U.append(u)
    split_caches.append((conv_cache, bn_cache))
    print(f"U_{m + 1}: {u.shape}   weight {params[f'convs.{m}.weight'].shape}")
# U_m: (N, C, H, W) = (4, 16, 32, 32); weight (C, C // G, 3, 3) = (16, 4, 3, 3)

# %% [markdown]
# ## Fuse
#
#     U = U_1 + U_2                        (N, C, H, W)
#     s = mean of U over H and W           (N, C)     one number per channel: global context
#     z = ReLU(BN(s @ W_fc.T))             (N, d)     W_fc: (d, C), no bias
#
# The batch norm here runs over a batch of N vectors: its statistics are per feature of z, over
# the N images.

# %%
u_sum = U[0] + U[1]
s, pool_cache = global_avg_pool_forward(u_sum)
print(s.shape)  # (N, C) = (4, 16)
z, fc_cache = linear_forward(s, params["fc.weight"])
print(z.shape)  # (N, d) = (4, 8)
fc_bn = [params[f"fc_bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
z, _, _, fc_bn_cache = batchnorm_forward(z, *fc_bn)
z, fc_relu_cache = relu_forward(z)
print(z.shape)  # (N, d) = (4, 8)

# %% [markdown]
# ## Select
#
#     logits = z @ W_sel.T                 (N, M*C) viewed as (N, M, C),  W_sel: (M*C, d)
#     a[n, m, c] = exp(logits[n, m, c]) / sum_k exp(logits[n, k, c])       softmax over M
#     V = a_1 * U_1 + a_2 * U_2            a_m (N, C) broadcast over H and W
#
# The softmax runs over the branch axis separately for every image and channel, so every channel
# of every image gets its own mix.

# %%
logits, select_cache = linear_forward(z, params["select.weight"])
print(logits.shape)  # (N, M*C) = (4, 32)
logits = logits.reshape(N, M, C)  # (N, M, C): the first C logits belong to branch 1
a, softmax_cache = branch_softmax_forward(logits)
print(a.shape)  # (N, M, C) = (4, 2, 16)
V = sum(a[:, m, :, None, None] * U[m] for m in range(M))  # (N, C, 1, 1) * (N, C, H, W)
print(V.shape)  # (N, C, H, W) = (4, 16, 32, 32)

np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # sums to 1 over M
print("attention of branch 1, image 0, first 6 channels:", a[0, 0, :6].round(3))

# %% [markdown]
# Now the whole unit in one call. `sk_unit_forward` reads M from the parameter names, checks
# every shape, and returns V and a cache; the cache keeps the attention as `cache.a`. Both agree
# with the step-by-step computation above.

# %%
V_unit, cache = sk_unit_forward(x, params, groups=G)
np.testing.assert_allclose(V_unit, V, rtol=1e-12, atol=1e-12)
np.testing.assert_allclose(cache.a, a, rtol=1e-12, atol=1e-12)
for m in range(M):
    np.testing.assert_allclose(cache.branches[m], U[m], rtol=1e-12, atol=1e-12)
print("sk_unit_forward == Split, Fuse, Select by hand")

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
# ## The softmax across branches, backwards
#
# For one image and channel, a = softmax(l) over the M logits l. Differentiating
# `a_m = exp(l_m) / sum_j exp(l_j)`:
#
#     da_m / dl_k = a_m * (delta_mk - a_k)
#
# an M x M Jacobian J for every (n, c). Backward multiplies the upstream gradient by it,
# `dl_k = sum_m da_m * J[m, k]`, which simplifies to `a_k * (da_k - sum_m da_m * a_m)`, the
# formula inside `branch_softmax_backward`. We build J explicitly, for all images and channels
# at once, and compare: with the package's function and with finite differences.

# %%
da = rng.standard_normal(a.shape)  # an upstream gradient (N, M, C)
a_last = a.transpose(0, 2, 1)  # (N, C, M): one softmax per row
J = a_last[..., :, None] * (np.eye(M) - a_last[..., None, :])  # (N, C, M, M), J[..., m, k]
print(J.shape)  # (N, C, M, M) = (4, 16, 2, 2)
dl_jacobian = np.einsum("ncm,ncmk->nck", da.transpose(0, 2, 1), J).transpose(0, 2, 1)
dl_package = branch_softmax_backward(da, softmax_cache)
dl_numeric = numerical_gradient(lambda lg: branch_softmax_forward(lg)[0], logits, da)
np.testing.assert_allclose(dl_package, dl_jacobian, rtol=1e-12, atol=1e-14)
err = rel_error(dl_package, dl_numeric)
print(f"branch softmax backward vs finite differences: {err:.1e}")
assert err < 1e-8

# %% [markdown]
# Every row of J sums to zero (`sum_k a_m (delta_mk - a_k) = a_m - a_m`): adding the same number
# to all M logits of a channel does not change the softmax. So the gradient of the logits sums to
# zero over the branches, whatever `da` is. For M = 2 only the difference `l_2 - l_1` matters.

# %%
np.testing.assert_allclose(J.sum(axis=-1), 0.0, atol=1e-15)
np.testing.assert_allclose(dl_package.sum(axis=1), 0.0, atol=1e-14)

# %% [markdown]
# ## The unit's backward pass
#
# `sk_unit_backward` undoes the forward in reverse: Select, then Fuse, then Split. Read it beside
# the forward steps above:

# %%
print(inspect.getsource(sk_unit_backward))

# %% [markdown]
# The one subtle point is that every branch output `U_m` reaches V **twice**:
#
# - **directly**, in `V = sum_m a_m U_m`: this path gives `dU_m = a_m * dV`;
# - **through the fused statistics**: `U_m` is part of `U = U_1 + ... + U_M`, which decides s, z,
#   the logits and hence every attention weight. Since `dU/dU_m` is the identity, this path gives
#   every branch the same gradient `dU`, the pooling's backward of `ds`.
#
# The chain rule adds the two: `dU_m = a_m * dV + dU`. We redo it step by step with the pairs,
# from a random upstream gradient dV, and keep the two paths apart to look at them.

# %%
dV = rng.standard_normal(V.shape)  # (N, C, H, W)

# Select, backwards. V = sum_m a_m U_m: the weight's gradient sums dV * U_m over the plane.
da = np.stack([(dV * U[m]).sum(axis=(2, 3)) for m in range(M)], axis=1)
print(da.shape)  # (N, M, C) = (4, 2, 16)
direct = [a[:, m, :, None, None] * dV for m in range(M)]  # path 1: (N, C, H, W) each
dlogits = branch_softmax_backward(da, softmax_cache)  # (N, M, C)
dz, dW_sel, _ = linear_backward(dlogits.reshape(N, M * C), select_cache)
print(dz.shape, dW_sel.shape)  # (N, d) = (4, 8), (M*C, d) = (32, 8)

# Fuse, backwards: ReLU, batch norm, the FC layer, the average pool.
dz = relu_backward(dz, fc_relu_cache)
dz, dgamma_fc, dbeta_fc = batchnorm_backward(dz, fc_bn_cache)
ds, dW_fc, _ = linear_backward(dz, fc_cache)
print(ds.shape, dW_fc.shape)  # (N, C) = (4, 16), (d, C) = (8, 16)
fused = global_avg_pool_backward(ds, pool_cache)  # path 2: (N, C, H, W), the same for all m
print(fused.shape)  # (N, C, H, W) = (4, 16, 32, 32)

# Split, backwards: add the paths, then each branch's BN + ReLU and convolution; the branches
# all read the same X, so their gradients of X add up.
dx = np.zeros_like(x)
my_grads = {"select.weight": dW_sel, "fc.weight": dW_fc}
my_grads |= {"fc_bn.weight": dgamma_fc, "fc_bn.bias": dbeta_fc}
for m, (conv_cache, bn_cache) in enumerate(split_caches):
    du, my_grads[f"bns.{m}.weight"], my_grads[f"bns.{m}.bias"] = batchnorm_relu_backward(
        direct[m] + fused, bn_cache
    )
    dx_m, my_grads[f"convs.{m}.weight"], _ = conv2d_backward(du, conv_cache)
    dx += dx_m

dx_unit, grads_unit = sk_unit_backward(dV, cache)
np.testing.assert_allclose(dx, dx_unit, rtol=1e-10, atol=1e-12)
assert set(my_grads) == set(grads_unit)
for name in grads_unit:
    np.testing.assert_allclose(my_grads[name], grads_unit[name], rtol=1e-10, atol=1e-12)
print("step-by-step backward == sk_unit_backward, for dx and all", len(grads_unit), "gradients")

# %% [markdown]
# The fused path is spread evenly over the plane (the average pool gives every pixel `ds / (H*W)`
# of its channel), so per pixel it is much smaller than the direct one. It is not negligible:
# drop it, and the gradient of X is plainly wrong.

# %%
for m in range(M):
    print(f"branch {m + 1}: |direct| = {np.linalg.norm(direct[m]):.3g}, ", end="")
    print(f"|fused| = {np.linalg.norm(fused):.3g}")
    assert np.linalg.norm(fused) < np.linalg.norm(direct[m])
dx_direct_only = np.zeros_like(x)
for m, (conv_cache, bn_cache) in enumerate(split_caches):
    du, _, _ = batchnorm_relu_backward(direct[m], bn_cache)
    dx_direct_only += conv2d_backward(du, conv_cache)[0]
err_without = rel_error(dx_direct_only, dx)
print(f"dx without the fused path: relative error {err_without:.2g}")
assert err_without > 1e-3

# %% [markdown]
# ## Gradient check
#
# Finally the unit against centred finite differences, for the input and every parameter:
# `check_sk_unit` builds a random float64 unit (N = 4 images, C = 8, G = 4, a 6x5 plane), draws
# a random upstream gradient, and returns the largest relative error per input. We check M = 2
# and M = 3 (three branches: dilations 1, 2 and 3), the latter with stride 2. (With N = 2 the
# fused batch norm maps each feature to about +-1 whatever its input, and the check would
# measure only rounding; hence N = 4.)

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
# - Split: M grouped 3x3 convolutions with dilations 1..M, each with BN and ReLU, give
#   `U_m (N, C, H', W')`.
# - Fuse: `s = GAP(U_1 + ... + U_M)` (N, C), `z = ReLU(BN(W_fc s))` (N, d), `d = max(C // r, L)`.
# - Select: logits `(N, M, C)`, a softmax over M, `V = sum_m a_m U_m`.
# - Backward: the softmax's Jacobian is `a_m (delta_mk - a_k)`; each `U_m` gets
#   `a_m dV` directly plus the fused-statistics gradient shared by all branches.
#
# Next: tutorial 11 stacks SK units into a network and trains it on CIFAR-10.
