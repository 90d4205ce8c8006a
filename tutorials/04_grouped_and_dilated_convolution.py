# %% [markdown]
# # 4. Grouped and dilated convolution
#
# **Goals.** After this tutorial you can
# - give the weight shape of a grouped convolution, and say which input channels each output
#   channel sees;
# - say what dilation does to the field a kernel reads, and which pixels it skips;
# - count the parameters and multiply-adds of a convolution, and compare the SK unit's grouped,
#   dilated 3x3 branch with a dense 5x5 convolution.
#
# **Prerequisites.** Tutorial 3 (the output size, im2col, `conv2d_forward`); tutorial 1 for
# the finite differences used once here.
#
# **Time.** About 35 minutes.
#
# Each branch of the SK unit is a **grouped** 3x3 convolution, and the second branch is also
# **dilated**: SK[2, 32, 16] uses $G = 32$ groups and dilations 1 and 2. This tutorial takes the
# two options apart: what groups do to the weight and to which inputs an output can see, what
# dilation does to the receptive field, and what both do to the number of parameters and
# multiply-adds.

# %%
import math

import numpy as np
from scipy.signal import correlate2d

from skscratch import conv2d_forward
from skscratch.gradcheck import numerical_gradient
from skscratch.im2col import im2col
from skscratch.plots import pyplot, show
from skscratch.sk import sk_param_shapes

rng = np.random.default_rng(0)

# %% [markdown]
# ## The weight of a grouped convolution
#
# With `groups` $= G$, the $C_\mathrm{in}$ input channels are split into $G$ consecutive blocks
# of $C_\mathrm{in}/G$, and the $C_\mathrm{out}$ output channels into $G$ blocks of
# $C_\mathrm{out}/G$. Output block $g$ is a dense convolution of input block $g$ alone. So every
# filter only needs $C_\mathrm{in}/G$ input channels, and the weight has shape
#
# $$ (C_\mathrm{out},\; C_\mathrm{in}/G,\; K_H,\; K_W) $$
#
# Here $C_\mathrm{in} = 8$, $C_\mathrm{out} = 12$, $G = 4$: the weight is `(12, 2, 3, 3)`;
# output channels $3g, 3g+1, 3g+2$ see input channels $2g, 2g+1$.
#
# In im2col terms (tutorial 3) the rows of `cols` split into $G$ blocks as well, and group $g$'s
# filters multiply only block $g$: one matrix product per group, which `np.matmul` batches. That
# is what `conv2d_forward` computes, and what yours must compute for `groups > 1` if you write
# the assignment exercise `conv`.

# %%
n, c_in, c_out, groups = 2, 8, 12, 4
x = rng.standard_normal((n, c_in, 6, 6))  # (N, C_in, H, W) = (2, 8, 6, 6)
w = rng.standard_normal((c_out, c_in // groups, 3, 3))  # (C_out, C_in/G, KH, KW) = (12, 2, 3, 3)
out, _ = conv2d_forward(x, w, padding=1, groups=groups)
print(x.shape, w.shape, "->", out.shape)  # (2, 8, 6, 6) (12, 2, 3, 3) -> (2, 12, 6, 6)

# %% [markdown]
# The definition, checked: the grouped convolution equals $G$ separate dense convolutions, one per
# slice of input channels and of filters, stacked along the channel axis.

# %%
ci_g, co_g = c_in // groups, c_out // groups  # 2 input and 3 output channels per group
per_group = [
    conv2d_forward(x[:, g * ci_g : (g + 1) * ci_g], w[g * co_g : (g + 1) * co_g], padding=1)[0]
    for g in range(groups)
]
print([p.shape for p in per_group])  # 4 x (N, C_out/G, H, W) = (2, 3, 6, 6)
np.testing.assert_allclose(np.concatenate(per_group, axis=1), out, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## Which inputs each group sees
#
# If output block g depends only on input block g, then changing input channel 0 (in group 0)
# must change output channels 0, 1, 2 (group 0) and leave the other nine *exactly* as they were,
# bit for bit, since they never read channel 0.

# %%
x_perturbed = x.copy()
x_perturbed[:, 0] += rng.standard_normal(x.shape[2:])  # change input channel 0 only
out_perturbed, _ = conv2d_forward(x_perturbed, w, padding=1, groups=groups)
changed = np.any(out_perturbed != out, axis=(0, 2, 3))  # (C_out,): did channel co change?
print("output channels that changed:", np.flatnonzero(changed))  # [0 1 2]
assert np.array_equal(np.flatnonzero(changed), [0, 1, 2])
assert np.array_equal(out_perturbed[:, 3:], out[:, 3:])  # groups 1, 2, 3: untouched

# %% [markdown]
# Doing this for every input channel gives the full dependency matrix
# `depends[co, ci]` = "output channel `co` changes when input channel `ci` does". For $G$ groups
# it must be block diagonal: $G$ blocks of $C_\mathrm{out}/G \times C_\mathrm{in}/G$ ones. We
# draw it for 8 channels in and out with $G$ = 1 (dense), 4, and 8. The last is **depthwise**:
# `groups == C`, one input channel per filter, weight `(C, 1, KH, KW)`.


# %%
def dependency_matrix(x, w, groups):
    base, _ = conv2d_forward(x, w, padding=1, groups=groups)
    depends = np.zeros((w.shape[0], x.shape[1]), dtype=bool)
    for ci in range(x.shape[1]):
        x_changed = x.copy()
        x_changed[:, ci] += 1.0
        changed_out, _ = conv2d_forward(x_changed, w, padding=1, groups=groups)
        depends[:, ci] = np.any(changed_out != base, axis=(0, 2, 3))
    return depends


x8 = rng.standard_normal((1, 8, 5, 5))
plt = pyplot()
fig, axes = plt.subplots(1, 3, figsize=(11, 4))
for ax, g in zip(axes, [1, 4, 8], strict=True):
    w8 = rng.standard_normal((8, 8 // g, 3, 3))  # (C_out, C_in/G, 3, 3)
    depends = dependency_matrix(x8, w8, g)
    block_diagonal = np.kron(np.eye(g, dtype=bool), np.ones((8 // g, 8 // g), dtype=bool))
    assert np.array_equal(depends, block_diagonal)
    ax.imshow(depends, cmap="Greys", vmin=0, vmax=1.4)
    ax.set_title(f"groups = {g}: weight {w8.shape}")
    ax.set_xlabel("input channel ci")
    ax.set_ylabel("output channel co")
    ax.set_xticks(range(8))
    ax.set_yticks(range(8))
axes[2].set_title("groups = 8 (depthwise): weight (8, 1, 3, 3)")
fig.suptitle("Dark: output channel co depends on input channel ci")
fig.tight_layout()
show(fig, "04_group_dependencies")

# %% [markdown]
# A depthwise convolution filters every channel with its own 3x3 kernel, nothing more. An
# independent check: `scipy.signal.correlate2d` of each channel with its filter (zero fill,
# `mode="same"` is padding 1 for a 3x3 kernel).

# %%
w_depthwise = rng.standard_normal((8, 1, 3, 3))  # (C, 1, KH, KW)
out_depthwise, _ = conv2d_forward(x8, w_depthwise, padding=1, groups=8)
for c in range(8):
    expected = correlate2d(x8[0, c], w_depthwise[c, 0], mode="same")
    np.testing.assert_allclose(out_depthwise[0, c], expected, rtol=1e-12, atol=1e-12)
print("depthwise == per-channel correlate2d; parameters:", w_depthwise.size, "vs dense", 8 * 8 * 9)

# %% [markdown]
# ## Dilation: a larger field with the same taps
#
# With dilation $d$ the kernel's taps are $d$ pixels apart: tap $(i, j)$ of output
# $(o_y, o_x)$ reads input pixel $(o_y s + i d - p,\; o_x s + j d - p)$. A 3x3 kernel with
# $d = 2$ still has 9 taps, but they cover a 5x5 square. It is exactly a 5x5 kernel with zeros
# between the taps:

# %%
w3 = rng.standard_normal((4, 8, 3, 3))
w5 = np.zeros((4, 8, 5, 5))
w5[:, :, ::2, ::2] = w3  # taps at rows and columns 0, 2, 4 of a 5x5 kernel
out_dilated, _ = conv2d_forward(x8, w3, padding=2, dilation=2)
out_5x5, _ = conv2d_forward(x8, w5, padding=2)
print(out_dilated.shape, out_5x5.shape)  # (1, 4, 5, 5) twice
np.testing.assert_allclose(out_dilated, out_5x5, rtol=1e-12, atol=1e-12)

# %% [markdown]
# Which input pixels does one output pixel read? The formula gives the positions
# $(o_y + (i - 1)d,\; o_x + (j - 1)d)$ for padding $d$ and stride 1. The gradient gives them
# too, without any formula: take `dout` equal to 1 at that one output pixel and 0 elsewhere;
# then `dx` is the derivative of that single output with respect to every input pixel, nonzero
# exactly where the output reads the input (we use a weight of ones, so no tap is zero). We take
# that derivative by finite differences (tutorial 1), which need only the forward pass;
# tutorial 5 derives the backward pass that computes it exactly. Below for a 9x9 input, output
# pixel (4, 4), dilation 1 and 2.

# %%
size, centre = 9, 4
fig, axes = plt.subplots(1, 2, figsize=(8.5, 5))
for ax, d in zip(axes, [1, 2], strict=True):
    x1 = rng.standard_normal((1, 1, size, size))  # (N, C, H, W) = (1, 1, 9, 9)
    dout = np.zeros((1, 1, size, size))  # the size is kept, padding = dilation
    dout[0, 0, centre, centre] = 1.0
    dx = numerical_gradient(
        lambda v, d=d: conv2d_forward(v, np.ones((1, 1, 3, 3)), padding=d, dilation=d)[0], x1, dout
    )
    footprint = dx[0, 0] != 0  # an input the output does not read changes nothing, not a bit

    expected = np.zeros((size, size), dtype=bool)
    for i in range(3):
        for j in range(3):
            expected[centre + (i - 1) * d, centre + (j - 1) * d] = True
    assert np.array_equal(footprint, expected)
    rows, cols = np.nonzero(footprint)
    extent = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    assert footprint.sum() == 9 and extent == (2 * d + 1, 2 * d + 1)
    print(f"dilation {d}: {footprint.sum()} input pixels, spanning {extent[0]}x{extent[1]}")

    ax.imshow(footprint, cmap="Oranges", vmin=0, vmax=1.3)
    ax.add_patch(
        plt.Rectangle(
            (centre - d - 0.5, centre - d - 0.5),
            2 * d + 1,
            2 * d + 1,
            fill=False,
            ec="k",
            ls="--",
            lw=1.5,
            zorder=3,
        )
    )
    ax.plot(centre, centre, "k+", ms=14, mew=2, label="position of the output pixel (4, 4)")
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xticks(np.arange(-0.5, size), minor=True)  # a light grid around every pixel
    ax.set_yticks(np.arange(-0.5, size), minor=True)
    ax.grid(which="minor", color="lightgrey", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("input column")
    ax.set_ylabel("input row")
    ax.set_title(f"dilation {d}: 9 taps over {2 * d + 1}x{2 * d + 1} (dashed)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center")
fig.suptitle("Orange: the input pixels one output of a 3x3 convolution reads (nonzero dx)")
fig.tight_layout(rect=(0, 0.08, 1, 1))
show(fig, "04_dilation_footprint")

# %% [markdown]
# ## What it costs: parameters and multiply-adds
#
# For a convolution from $C_\mathrm{in}$ to $C_\mathrm{out}$ channels with $G$ groups, a
# $K_H \times K_W$ kernel and an $H_\mathrm{out} \times W_\mathrm{out}$ output:
#
# $$ \text{parameters} = C_\mathrm{out} \cdot \frac{C_\mathrm{in}}{G} \cdot K_H K_W, \qquad
#    \text{multiply-adds} = \text{parameters} \cdot H_\mathrm{out} W_\mathrm{out}
#    \quad \text{(per image)} $$
#
# since every weight is used once at every output position. Dilation changes neither count; it
# only changes which pixels are read. We compare three ways of giving a 64-channel, 32x32 map a
# 5x5 field, as in an SK unit with $C = 64$ and $G = 32$:
#
# - a dense 5x5 convolution (padding 2),
# - a dense 3x3 convolution with dilation 2 (padding 2),
# - a grouped 3x3 convolution with dilation 2 and $G = 32$, the SK unit's second branch.
#
# The formula's numbers are asserted against counts taken from the arrays themselves: the size
# of the weight, and the shapes of the matrix products `conv2d_forward` performs (per image and
# group, a $(C_\mathrm{out}/G) \times K$ by $K \times L$ product costs
# $(C_\mathrm{out}/G)\, K L$ multiply-adds, with $K = (C_\mathrm{in}/G) K_H K_W$ rows of
# `cols` per group and $L = H_\mathrm{out} W_\mathrm{out}$ columns).

# %%
c, g_sk, hw = 64, 32, 32
x_sk = np.zeros((1, c, hw, hw), dtype=np.float32)  # (N, C, H, W) = (1, 64, 32, 32)
configs = [  # name, KH, dilation, groups, padding
    ("dense 5x5", 5, 1, 1, 2),
    ("dense 3x3, dilation 2", 3, 2, 1, 2),
    ("grouped 3x3, dilation 2, G=32", 3, 2, g_sk, 2),
]
print(f"{'':30} {'field':>5} {'parameters':>11} {'multiply-adds':>14}")
counts = {}
for name, k, d, g, p in configs:
    params_formula = c * (c // g) * k * k
    stride = 1
    h_out = (hw + 2 * p - d * (k - 1) - 1) // stride + 1
    macs_formula = params_formula * h_out * h_out

    w_cfg = np.zeros((c, c // g, k, k), dtype=np.float32)
    out_cfg, _ = conv2d_forward(x_sk, w_cfg, padding=p, dilation=d, groups=g)
    cols = im2col(x_sk, k, k, padding=p, dilation=d)  # (1, C*KH*KW, L)
    rows_per_group, length = cols.shape[1] // g, cols.shape[2]
    macs_from_shapes = g * (c // g) * rows_per_group * length
    assert out_cfg.shape == (1, c, hw, hw) and length == out_cfg.shape[2] * out_cfg.shape[3]
    assert w_cfg.size == params_formula and macs_from_shapes == macs_formula
    counts[name] = (w_cfg.size, macs_from_shapes)
    field = d * (k - 1) + 1
    print(f"{name:30} {field}x{field} {w_cfg.size:11,} {macs_from_shapes:14,}")

assert counts["dense 5x5"] == (102_400, 104_857_600)
assert counts["dense 3x3, dilation 2"] == (36_864, 37_748_736)
assert counts["grouped 3x3, dilation 2, G=32"] == (1_152, 1_179_648)
assert sk_param_shapes(c, groups=g_sk)["convs.1.weight"] == (64, 2, 3, 3)  # the SK branch

# %% [markdown]
# All three read a 5x5 field. Dilation divides the cost of the dense 5x5 by 25/9 = 2.8, and
# groups divide it by another 32 (each filter sees 64/32 = 2 channels instead of 64): the
# grouped dilated branch costs 1/89 of the dense 5x5. This is why the paper, having introduced
# SK units with a 3x3 and a 5x5 branch, replaces the 5x5 kernel by a dilated 3x3 "for further
# efficiency", and keeps the grouped convolutions of ResNeXt in every branch.
#
# The price of dilation is visible in the footprint above: the 9 taps skip every other pixel, so
# a single dilated layer does not see the pixels between them. Whether the wider, sparser field
# helps is what the SK unit learns to decide, channel by channel, with its attention weights.

# %%
ratio = counts["dense 5x5"][0] / counts["grouped 3x3, dilation 2, G=32"][0]
print(f"dense 5x5 / grouped dilated 3x3 = {ratio:.1f}")  # 25/9 * 32 = 88.9
np.testing.assert_allclose(ratio, 25 / 9 * 32)

# %% [markdown]
# ## Summary
#
# - With $G$ groups the weight is $(C_\mathrm{out}, C_\mathrm{in}/G, K_H, K_W)$ and the
#   convolution is $G$ dense convolutions side by side: changing input channel 0 changed output
#   channels 0, 1, 2 and left the other nine bit for bit unchanged, and the dependency matrix
#   is block diagonal for $G$ = 1, 4 and 8. A depthwise convolution ($G = C$) equals
#   `correlate2d` channel by channel.
# - A 3x3 kernel with dilation 2 equals a 5x5 kernel with zeros between its taps: one output
#   reads 9 pixels spread over 5x5 (3x3 with dilation 1).
# - Parameters $= C_\mathrm{out} (C_\mathrm{in}/G) K_H K_W$, multiply-adds = parameters
#   $\times H_\mathrm{out} W_\mathrm{out}$: for 64 channels of 32x32, a dense 5x5 has 102,400
#   parameters and 104,857,600 multiply-adds, a dense dilated 3x3 36,864 and 37,748,736, the
#   SK unit's grouped dilated 3x3 ($G = 32$) 1,152 and 1,179,648: $25/9 \times 32 = 88.9$
#   times fewer than the dense 5x5, for the same field.
#
# ## Exercises
#
# 1. How many parameters has a grouped 3x3 convolution from 128 to 128 channels with $G = 32$,
#    an SK branch of the network's last stage?

# %%
# BEGIN SOLUTION
params_128 = 128 * (128 // 32) * 3 * 3
# END SOLUTION
assert params_128 == math.prod(sk_param_shapes(128, groups=32)["convs.0.weight"])

# %% [markdown]
# 2. The same convolution on a 16x16 input, stride 1 and *no* padding: how many multiply-adds
#    per image? (The check runs it on an input and a weight of ones: every multiply-add then adds
#    exactly 1 to the sum of the output.)

# %%
# BEGIN SOLUTION
macs_128 = params_128 * 14 * 14  # H_out = W_out = 16 - 3 + 1 = 14
# END SOLUTION
ones_out, _ = conv2d_forward(np.ones((1, 128, 16, 16)), np.ones((128, 4, 3, 3)), groups=32)
assert ones_out.sum() == macs_128

# %% [markdown]
# 3. In the first example of this tutorial ($C_\mathrm{in} = 8$, $C_\mathrm{out} = 12$,
#    $G = 4$), which output channels change when input channel 5 changes?

# %%
# BEGIN SOLUTION
changed_by_5 = [6, 7, 8]  # channel 5 is in group 5 // 2 = 2, whose outputs are 3*2 .. 3*2 + 2
# END SOLUTION
x_5 = x.copy()
x_5[:, 5] += 1.0
out_5, _ = conv2d_forward(x_5, w, padding=1, groups=groups)
assert np.array_equal(np.flatnonzero(np.any(out_5 != out, axis=(0, 2, 3))), changed_by_5)

# %% [markdown]
# 4. Two 3x3 convolutions in a row, each padded by its dilation. If the first has dilation 1 and
#    the second dilation 2, how wide is the square of input pixels that one output pixel
#    depends on, and how many pixels of that square does it read? And if both have dilation 2?
#    (The check finds the footprint as above, by finite differences through both layers.)


# %%
def two_layer_footprint(d1, d2, size=15):
    """Which input pixels the centre output of two stacked 3x3 convolutions depends on."""
    ones3 = np.ones((1, 1, 3, 3))

    def two_layers(v):
        h = conv2d_forward(v, ones3, padding=d1, dilation=d1)[0]
        return conv2d_forward(h, ones3, padding=d2, dilation=d2)[0]

    dout = np.zeros((1, 1, size, size))
    dout[0, 0, size // 2, size // 2] = 1.0
    x_in = rng.standard_normal((1, 1, size, size))
    return numerical_gradient(two_layers, x_in, dout)[0, 0] != 0


# BEGIN SOLUTION
width_12, pixels_12 = 1 + 2 * 1 + 2 * 2, 7 * 7  # offsets -1..1 plus -2, 0, 2: all of -3..3
width_22, pixels_22 = 1 + 2 * 2 + 2 * 2, 5 * 5  # offsets -4, -2, 0, 2, 4: only the even ones
# END SOLUTION
for (d1, d2), width, pixels in [((1, 2), width_12, pixels_12), ((2, 2), width_22, pixels_22)]:
    rows, columns = np.nonzero(two_layer_footprint(d1, d2))
    assert rows.max() - rows.min() + 1 == columns.max() - columns.min() + 1 == width
    assert rows.size == pixels
