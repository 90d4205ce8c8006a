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
# - check a whole network's gradients against finite differences.
#
# **Prerequisites.** Tutorial 1 (gradients add where a value is used twice), tutorials on
# convolution, batch norm and the SK unit.
#
# **Time.** About 30 minutes.

# %%
import numpy as np

from skscratch.gradcheck import rel_error
from skscratch.models import SKBottleneck, SKNetConfig, SKResNeXt
from skscratch.nn import Module

rng = np.random.default_rng(0)

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
# In a deep network that is a good start; in a shallow one (skscratch's default network has one
# block per stage) it delays learning: for the first steps most of the network is frozen. The
# default network therefore starts with $\gamma_3 = 1$ (`SKNetConfig(zero_init_residual=False)`;
# the README records how much faster it learns).

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
# - Modules only do bookkeeping: caches in forward, handed over once in backward, gradients in
#   `p.grad`; the mathematics is in the pairs.
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
