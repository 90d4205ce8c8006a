# %% [markdown]
# # 9. The residual block and the whole network's backward
#
# **Goals.** After this tutorial you can
# - run an SK bottleneck block's backward by hand, from its parts, and see the two gradients
#   meet where the residual path and the shortcut join;
# - say why every block's last batch-norm scale may start at 0, and what that does to the first
#   steps of training;
# - follow what a `Module` does in a network's forward and backward: caches kept, handed over
#   once, gradients stored;
# - derive the backward pass of the global average pooling at the network's end;
# - check a whole network's gradients against finite differences.
#
# **Prerequisites.** Tutorial 1 (gradients add where a value is used twice), tutorial 2 (the
# fully connected layer), tutorials 5, 6 and 8 (convolution, batch norm and the SK unit).
#
# **Time.** About 30 minutes.

# %%
import numpy as np

from skscratch.assignment.student import check
from skscratch.gradcheck import numerical_gradient, rel_error
from skscratch.models import SKBottleneck, SKNetConfig, SKResNeXt
from skscratch.nn import Module
from skscratch.plots import pyplot, show
from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward

rng = np.random.default_rng(0)

# %% [markdown]
# ## Where the network's backward starts
#
# The network ends as tutorial 2 described: the last block's output $x$, of shape
# $(N, C, H, W)$, is averaged over each channel's plane, and a fully connected layer maps the
# $C$ averages to the logits,
#
# $$ s_{nc} = \frac{1}{HW} \sum_{i=1}^{H} \sum_{j=1}^{W} x_{ncij}, \qquad
#    \text{logits} = s W^\top + b. $$
#
# Its backward starts with the loss's gradient of the logits, passes it back through the FC
# layer (tutorial 1's $\partial L/\partial s = \delta W$), then through the pooling. Each
# $s_{nc}$ depends on the $HW$ pixels of its own plane only, each with weight $1/(HW)$:
#
# $$ \frac{\partial s_{n'c'}}{\partial x_{ncij}} = \frac{[n' = n]\,[c' = c]}{HW}
#    \quad\Rightarrow\quad
#    \frac{\partial L}{\partial x_{ncij}} = \sum_{n', c'}
#    \frac{\partial L}{\partial s_{n'c'}} \frac{\partial s_{n'c'}}{\partial x_{ncij}}
#    = \frac{1}{HW} \frac{\partial L}{\partial s_{nc}}. $$
#
# Every pixel of a plane receives the same share of its channel's gradient, $1/(HW)$ of it,
# whatever its value: the backward spreads $\partial L/\partial s$ evenly over the plane, and
# the shares of a plane add up to $\partial L/\partial s_{nc}$ again. From there the gradient
# enters the last block through its final ReLU (tutorial 1's mask $[z > 0]$).
#
# ### Your turn: ReLU, pool and FC backward (assignment exercise `relu_pool_fc`)
#
# In a student copy (`python -m skscratch assignment make`), the bodies of `relu_backward` in
# `skscratch/activations.py`, `global_avg_pool_backward` in `skscratch/pooling.py` and
# `linear_backward` in `skscratch/linear.py` are yours to write, from the formulas above and
# tutorial 1's. Keep the gradients' shapes and dtypes those of the forward inputs (the pool's
# is $(N, C, H, W)$ from an $(N, C)$ gradient), and let ReLU pass nothing where its output was
# 0. The cell below runs the exercise's visible checks on them; the rest of the chapter uses
# your functions.

# %%
assert check("relu_pool_fc") == 0, "exercise relu_pool_fc: see the failures above"

# %% [markdown]
# On a small input, the pool's gradient is constant over each plane, its plane sums give back
# $\partial L / \partial s$, and finite differences of the forward pass agree:

# %%
xp = rng.standard_normal((2, 3, 4, 5))
sp, pool_cache = global_avg_pool_forward(xp)  # (N, C) = (2, 3)
dsp = rng.standard_normal(sp.shape)
dxp = global_avg_pool_backward(dsp, pool_cache)  # (N, C, H, W) = (2, 3, 4, 5)
assert dxp.shape == xp.shape and np.ptp(dxp, axis=(2, 3)).max() == 0
np.testing.assert_allclose(dxp.sum(axis=(2, 3)), dsp, rtol=1e-12)
numeric = numerical_gradient(lambda v: global_avg_pool_forward(v)[0], xp, dsp)
assert rel_error(dxp, numeric) < 1e-8
print(f"pixel gradient of plane (0, 0): {dxp[0, 0, 0, 0]:.4f} = {dsp[0, 0]:.4f} / 20")

# %% [markdown]
# ## The block
#
# An SK bottleneck block computes
#
# $$ y = \operatorname{ReLU}\big( F(x) + S(x) \big), $$
#
# where $F$ is the residual path (1x1 conv, BN, ReLU, SK unit, 1x1 conv, BN) and $S$ the
# shortcut: $x$ itself, or a strided 1x1 conv and BN when the shape changes. $x$ is used twice,
# so by the rule of tutorial 1 its gradient is the sum of the two paths' gradients:
#
# $$ \frac{\partial L}{\partial x} = J_F^\top \delta + J_S^\top \delta, \qquad
#    \delta = \frac{\partial L}{\partial y} \odot [F(x) + S(x) > 0]. $$
#
# For the identity shortcut $J_S^\top \delta = \delta$: the gradient reaches $x$ unchanged,
# however deep the network, which is what makes deep residual networks trainable.

# %%
block = SKBottleneck(8, 4, 8, groups=2, r=2, L=4, rng=rng).astype(np.float64)
for name, p in block.named_parameters():  # scales away from 0 and 1, to see every path
    if p.data.ndim == 1 and name.endswith("weight"):
        p.data = rng.uniform(0.5, 1.5, p.data.shape)
x = rng.standard_normal((4, 8, 6, 6))
dy = rng.standard_normal((4, 8, 6, 6))

y = block.forward(x)
dx = block.backward(dy)

# The same by hand, from the block's children, in reverse order of the forward.
residual = ["conv1", "bn1", "sk", "conv3", "bn3"]
f = x
for name in residual:
    f = block.children[name].forward(f)
delta = dy * (f + x > 0)  # through the final ReLU
d = delta
for name in reversed(residual):
    d = block.children[name].backward(d)
dx_by_hand = d + delta  # the residual path's gradient plus the identity shortcut's
np.testing.assert_allclose(y, np.maximum(f + x, 0), rtol=1e-12)
np.testing.assert_allclose(dx, dx_by_hand, rtol=1e-10, atol=1e-12)
print(
    f"|residual path's dx| = {np.linalg.norm(d):.3g}, |shortcut's dx| = {np.linalg.norm(delta):.3g}"
)

# %% [markdown]
# ## A block that starts as its shortcut
#
# With the last BN's scale $\gamma_3 = 0$, $F(x) = 0$ for every input and the block computes
# $\operatorname{ReLU}(S(x))$: a fresh network of such blocks is a shallow one, its signal and
# gradients pass through the shortcuts undamped, and each block switches its residual path on
# as $\gamma_3$ grows (Goyal et al. 2017). Until it does, the residual path does not learn:
# the gradient that reaches it passes through $\gamma_3$ and is multiplied by 0, so in the
# first step only the last BN's own scale and shift (and the shortcut, if it has weights) move.

# %%
fresh = SKBottleneck(8, 4, 8, groups=2, r=2, L=4, rng=rng).astype(np.float64)
assert np.all(fresh.children["bn3"].params["weight"].data == 0)
np.testing.assert_array_equal(fresh.forward(x), np.maximum(x, 0))
fresh.backward(dy)
grads = {name: np.abs(p.grad).max() for name, p in fresh.named_parameters()}
assert grads["bn3.weight"] > 0
assert all(grads[name] == 0 for name in grads if name.startswith(("conv1", "bn1", "sk", "conv3")))
print("with gamma_3 = 0 only bn3's parameters get a gradient:",
      sorted(n for n, v in grads.items() if v > 0))  # fmt: skip

# %% [markdown]
# In a deep network that is a good start; in a shallow one (skscratch's default network has four
# blocks) it delays learning: for the first steps most of the network is frozen. The
# default network therefore starts with $\gamma_3 = 1$ (`SKNetConfig(zero_init_residual=False)`;
# the README records how much faster it learns).

# %% [markdown]
# ## Through a stack of blocks
#
# How the gradient's scale changes on its way down sixteen blocks, measured as
# $\lVert \partial L / \partial x_k \rVert / \lVert \partial L / \partial y \rVert$ at the input
# $x_k$ of each block, counted from the top. Three stacks of blocks of one shape: without the
# shortcut ($y = \operatorname{ReLU}(F(x))$, a plain network), with it, and with it and
# $\gamma_3 = 0$. Through the shortcut the gradient arrives whole at every block, and each
# residual path only adds its own term to it; without it, each block's Jacobian multiplies the
# gradient, and the products drift by orders of magnitude. With $\gamma_3 = 0$ the residual
# terms are 0 and, past the first ReLU mask, the gradient passes unchanged.


# %%
def gradient_norms(stack, shortcut):
    """Forward through the blocks' residual paths by hand; the gradient's norm at each input."""
    h, masks = x, []
    for blk in stack:
        f = h
        for name in residual:
            f = blk.children[name].forward(f)
        before_relu = f + h if shortcut else f
        masks.append(before_relu > 0)
        h = np.maximum(before_relu, 0)
    d, norms = dy, [np.linalg.norm(dy)]
    for blk, mask in zip(reversed(stack), reversed(masks), strict=True):
        delta = d * mask  # through the final ReLU
        d = delta
        for name in reversed(residual):
            d = blk.children[name].backward(d)
        if shortcut:
            d = d + delta  # the two paths join: their gradients add
        norms.append(np.linalg.norm(d))
    return np.array(norms) / norms[0]


def new_stack(zero_init, depth=16):
    return [SKBottleneck(8, 4, 8, groups=2, r=2, L=4, zero_init_residual=zero_init, rng=rng)
            .astype(np.float64) for _ in range(depth)]  # fmt: skip


stack = new_stack(zero_init=False)
curves = {
    "no shortcut": gradient_norms(stack, shortcut=False),
    "shortcut": gradient_norms(stack, shortcut=True),
    "shortcut, gamma_3 = 0": gradient_norms(new_stack(zero_init=True), shortcut=True),
}
plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 3.4))
for name, curve in curves.items():
    ax.semilogy(curve, "o-", ms=3, label=name.replace("gamma_3", "$\\gamma_3$"))
ax.set(xlabel="blocks passed, from the top", ylabel="|dL/dx_k| / |dL/dy|",
       title="The gradient's scale through 16 blocks")  # fmt: skip
ax.legend()
fig.tight_layout()
show(fig, "09_gradient_through_blocks")
print({name: f"{curve[-1]:.3g}" for name, curve in curves.items()})
assert curves["shortcut"].max() < 100 < 1000 < curves["no shortcut"][-1]
assert curves["no shortcut"][-1] > 100 * curves["shortcut"][-1]
zero_init = curves["shortcut, gamma_3 = 0"]
np.testing.assert_allclose(zero_init[2:], zero_init[1])  # the same after the first mask

# %% [markdown]
# ## What a Module does
#
# A `Module` runs its pair and keeps the cache (`forward`), hands that cache to the backward
# pair once and frees it (`backward`: a finished step holds no activations), and stores each
# parameter's gradient in `p.grad`. A composite module (a block, the network) calls its children
# in order forward and in reverse backward, and sums gradients where its own graph joins paths.

# %%
net = SKResNeXt(SKNetConfig(stem=4, mids=(4, 8, 8), outs=(8, 8, 16), groups=2, r=2, L=4),
                seed=1, backend="reference").astype(np.float64)  # fmt: skip
images = rng.standard_normal((3, 3, 16, 16))
logits = net.forward(images)
cached = [name for name, m in net.named_modules() if m._cache is not None]
net.backward(rng.standard_normal(logits.shape))
assert cached and all(m._cache is None for _, m in net.named_modules())
assert all(p.grad is not None for p in net.parameters())
print(f"{len(cached)} modules kept a cache in forward; backward freed all of them and set "
      f"{len(net.parameters())} gradients")  # fmt: skip
assert isinstance(net, Module)

# %% [markdown]
# ## The whole network against finite differences
#
# One parameter entry at a time, nudged by $\pm h$: the change of $L = \sum g \odot
# \text{logits}$ must match the stored gradient. (Every batch norm is in training mode, so
# each forward pass uses its own batch statistics, as the backward pass assumes.)

# %%
g = rng.standard_normal(logits.shape)
net.forward(images)
net.backward(g)
h = 1e-6
errors = {}
for name, p in net.named_parameters():
    i = int(np.argmax(np.abs(p.grad)))  # the largest entry: a clear signal
    old = p.data.flat[i]
    p.data.flat[i] = old + h
    plus = np.sum(net.forward(images) * g)
    p.data.flat[i] = old - h
    minus = np.sum(net.forward(images) * g)
    p.data.flat[i] = old
    errors[name] = rel_error(p.grad.flat[i], (plus - minus) / (2 * h))
worst = max(errors, key=errors.get)
print(f"{len(errors)} parameters, worst relative error {errors[worst]:.1e} ({worst})")
assert errors[worst] < 1e-5

# %% [markdown]
# ## Summary
#
# - A residual block sums two paths; its input's gradient is the sum of both paths' gradients,
#   and the identity shortcut passes the gradient on unchanged.
# - A zero last-BN scale makes a block start as its shortcut: the residual path gets no
#   gradient until that scale moves, which helps deep networks and slows shallow ones.
# - Through a stack of 16 blocks, the shortcut keeps the gradient's scale within a factor of 100
#   where the plain stack's grows more than 1000-fold (here about $10^4$); with $\gamma_3 = 0$
#   the gradient passes unchanged past the first ReLU mask.
# - The network's backward starts at the FC layer and the global average pooling, which gives
#   every pixel $1/(HW)$ of its channel's gradient.
# - Modules only do bookkeeping: caches in forward, handed over once in backward, gradients in
#   `p.grad`; the mathematics is in the pairs.
# - A whole small network's gradients agree with finite differences to a relative error below
#   $10^{-5}$, parameter by parameter.
#
# ## Exercises
#
# 1. A block whose shortcut is the identity: what is $\partial L / \partial x$ if the residual
#    path's output is 0 for every input ($\gamma_3 = 0$)? Write it from `dy` and `x` alone.

# %%
fresh = SKBottleneck(8, 4, 8, groups=2, r=2, L=4, rng=rng).astype(np.float64)
fresh.forward(x)
# BEGIN SOLUTION
dx_expected = dy * (x > 0)
# END SOLUTION
np.testing.assert_allclose(fresh.backward(dy), dx_expected, rtol=1e-12)

# %% [markdown]
# 2. Count the modules of the small network above that keep a cache during a forward pass in
#    training mode, and explain the number: which modules have none?

# %%
# BEGIN SOLUTION
with_cache = sum(1 for _, m in net.named_modules() if not m.children)
# END SOLUTION
net.forward(images)
assert with_cache == sum(1 for _, m in net.named_modules() if m._cache is not None)
net.backward(np.zeros_like(logits))

# %% [markdown]
# 3. A fresh block whose shape changes, `SKBottleneck(8, 4, 16, stride=2, ...)`, has a projection
#    shortcut (a strided 1x1 convolution, `shortcut.0`, and a batch norm, `shortcut.1`) and
#    starts with $\gamma_3 = 0$. Which of its parameters get a non-zero gradient from its first
#    backward pass? Give their names as a set.

# %%
# BEGIN SOLUTION
moving = {"bn3.weight", "bn3.bias", "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"}
# END SOLUTION
strided = SKBottleneck(8, 4, 16, stride=2, groups=2, r=2, L=4, rng=rng).astype(np.float64)
strided.forward(x)
strided.backward(rng.standard_normal((4, 16, 3, 3)))
assert moving == {name for name, p in strided.named_parameters() if np.abs(p.grad).max() > 0}

# %% [markdown]
# 4. The default network pools a $4 \times 4$ plane per channel. If the loss's gradient of one
#    channel's average is 1, what gradient does each of that plane's pixels receive? Work it
#    out by hand.

# %%
# BEGIN SOLUTION
per_pixel = 1 / 16
# END SOLUTION
plane = rng.standard_normal((1, 1, 4, 4))
numeric = numerical_gradient(lambda v: global_avg_pool_forward(v)[0], plane, np.ones((1, 1)))
np.testing.assert_allclose(numeric, np.full((1, 1, 4, 4), per_pixel), rtol=1e-6)
