# %% [markdown]
# # 1. The chain rule on a computational graph
#
# **Goals.** After this tutorial you can
# - draw a small network as a graph of operations, and run it forward node by node;
# - run it backward as a chain of *vector-Jacobian products*, one per node, without ever
#   forming a Jacobian;
# - explain why gradients *add* where a value is used twice, the rule behind the SK unit's and
#   the residual block's backward passes;
# - check a backward pass against finite differences.
#
# **Prerequisites.** Matrix products in NumPy; the derivative of a function of one variable.
#
# **Time.** About 30 minutes.
#
# Every layer of skscratch is a pair of functions, a forward and a backward pass. This
# tutorial shows why that pair is all a network needs: the chain rule, applied node by node.

# %%
import numpy as np

from skscratch.activations import relu_backward, relu_forward
from skscratch.gradcheck import numerical_gradient, rel_error
from skscratch.linear import linear_backward, linear_forward
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## A graph of two nodes
#
# The smallest piece of a network: a fully connected layer and a ReLU,
#
# $$ z = x W^\top + b, \qquad h = \max(z, 0), $$
#
# with $x$ of shape $(N, D)$, $W$ of shape $(K, D)$ and $b$ of shape $(K,)$. To have a number to
# differentiate, weight the output with a fixed array $g$ of the shape of $h$ and sum:
#
# $$ L = \sum_{n,k} g_{nk} \, h_{nk}. $$
#
# (Any loss looks like this to the layers below it: whatever comes after $h$ only ever tells
# them $\partial L / \partial h$, which here is exactly $g$.)

# %%
N, D, K = 4, 3, 5
x = rng.standard_normal((N, D))
W = rng.standard_normal((K, D))
b = rng.standard_normal(K)
g = rng.standard_normal((N, K))

z = x @ W.T + b  # (N, K)
h = np.maximum(z, 0)  # (N, K)
L = np.sum(g * h)
print(f"L = {L:.4f}")

# %% [markdown]
# Drawn as a graph, values are the edges and operations the nodes:

# %%
plt = pyplot()
fig, ax = plt.subplots(figsize=(8, 2.6))
boxes = {"x": (0.05, 0.7), "W, b": (0.05, 0.25), "linear": (0.3, 0.5), "ReLU": (0.55, 0.5),
         "sum(g * h)": (0.8, 0.5)}  # fmt: skip
for name, (bx, by) in boxes.items():
    fill = "white" if name in ("x", "W, b") else "#dde8f5"  # inputs white, operations blue
    ax.text(bx, by, name, ha="center", va="center", fontsize=11,
            bbox=dict(boxstyle="round", fc=fill))  # fmt: skip
for start, end, label in [("x", "linear", "x"), ("W, b", "linear", "W, b"),
                          ("linear", "ReLU", "z"), ("ReLU", "sum(g * h)", "h")]:  # fmt: skip
    (x0, y0), (x1, y1) = boxes[start], boxes[end]
    ax.annotate("", xy=(x1 - 0.07, y1), xytext=(x0 + 0.07, y0),
                arrowprops=dict(arrowstyle="->"))  # fmt: skip
    ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, label, ha="center", fontsize=10, color="gray")
ax.text(0.5, 0.05, "forward: left to right; backward: right to left, one product per node",
        ha="center", fontsize=9)  # fmt: skip
ax.set_axis_off()
show(fig, "01_graph")

# %% [markdown]
# ## Backward: one vector-Jacobian product per node
#
# The chain rule says that the gradient of $L$ with respect to a node's input is the gradient
# with respect to its output, pulled back through the node's Jacobian:
#
# $$ \frac{\partial L}{\partial z_{nk}} = \sum_{n',k'} \frac{\partial L}{\partial h_{n'k'}}
#    \frac{\partial h_{n'k'}}{\partial z_{nk}}. $$
#
# The Jacobian $\partial h / \partial z$ has $(NK)^2$ entries, but ReLU acts entry by entry, so
# all of them are zero except the diagonal, which is 1 where $z > 0$ and 0 elsewhere. The sum
# collapses to a product of entries:
#
# $$ \frac{\partial L}{\partial z} = \frac{\partial L}{\partial h} \odot [z > 0]. $$
#
# For the linear node, $z_{nk} = \sum_d x_{nd} W_{kd} + b_k$, and the same collapse gives
#
# $$ \frac{\partial L}{\partial x} = \frac{\partial L}{\partial z} W, \qquad
#    \frac{\partial L}{\partial W} = \Big(\frac{\partial L}{\partial z}\Big)^{\!\top} x, \qquad
#    \frac{\partial L}{\partial b} = \sum_n \frac{\partial L}{\partial z_{n\cdot}}. $$
#
# Each is a *vector-Jacobian product*: the upstream gradient times the node's Jacobian, computed
# from the node's own formula without building the Jacobian. This is what every `_backward`
# function of skscratch computes.
#
# In skscratch the two products are `relu_backward` and `linear_backward`. Each forward returns a
# cache (what its backward will need), and the backward passes run in reverse order, each taking
# the gradient the one after it returned:

# %%
z2, linear_cache = linear_forward(x, W, b)
h2, relu_cache = relu_forward(z2)
np.testing.assert_allclose(h2, h, rtol=1e-12)  # the same forward pass as above
dz = relu_backward(g, relu_cache)  # dL/dz, (N, K)
dx, dW, db = linear_backward(dz, linear_cache)  # (N, D), (K, D), (K,)
print(f"dz {dz.shape}, dx {dx.shape}, dW {dW.shape}, db {db.shape}")
assert dx.shape == x.shape and dW.shape == W.shape and db.shape == b.shape

# %% [markdown]
# In an assignment (`python -m skscratch assignment make`) these two backward functions are
# yours to write, from the formulas above. With the global average pool's backward they form
# one exercise, `relu_pool_fc`; tutorial 9 derives the pool's backward, the last of the three,
# and runs the exercise's checks there. Until then the finite differences below check them.

# %% [markdown]
# ## The Jacobian, once, to see what is avoided
#
# For this small layer the full Jacobian of $z$ with respect to $W$ fits in memory:
# $NK \times KD = 20 \times 15$ entries, of which only $N D K = 60$ are not zero. Multiplying
# the flattened upstream gradient by it gives the same $\partial L / \partial W$ as the one-line
# product above. In a real layer ($N = 128$ images, a $32 \times 32 \times 64$ output,
# $64 \times 64 \times 9$ weights) the Jacobian would have
# $(128 \cdot 32 \cdot 32 \cdot 64) \times (64 \cdot 64 \cdot 9) \approx 3 \times 10^{11}$
# entries; the vector-Jacobian product never forms it.

# %%
J = np.zeros((N * K, K * D))  # d z[n, k] / d W[k', d]
for n in range(N):
    for k in range(K):
        for d in range(D):
            J[n * K + k, k * D + d] = x[n, d]
dW_from_jacobian = (dz.reshape(-1) @ J).reshape(K, D)
np.testing.assert_allclose(dW_from_jacobian, dW, rtol=1e-12)
assert np.count_nonzero(J) == N * K * D and J.size == 300
print(f"Jacobian {J.shape}, {np.count_nonzero(J)} of {J.size} entries non-zero")
real_layer = (128 * 32 * 32 * 64) * (64 * 64 * 9)  # output entries x weight entries
print(f"a real layer's Jacobian: {real_layer:.1e} entries")
assert 2.5e11 < real_layer < 3.5e11

# %% [markdown]
# ## Checking against finite differences
#
# A centred difference $(L(W + \epsilon e_i) - L(W - \epsilon e_i)) / 2\epsilon$ estimates each
# entry of the gradient independently of our derivation (tutorial 7 looks at this closely).
# `numerical_gradient(f, v, dout)` does that for $L = \sum f(v) \odot \text{dout}$.


# %%
def net(x, W, b):
    return np.maximum(x @ W.T + b, 0)


for name, analytic, numeric in [
    ("dx", dx, numerical_gradient(lambda v: net(v, W, b), x, g)),
    ("dW", dW, numerical_gradient(lambda v: net(x, v, b), W, g)),
    ("db", db, numerical_gradient(lambda v: net(x, W, v), b, g)),
]:
    err = rel_error(analytic, numeric)
    print(f"{name}: relative error {err:.1e}")
    assert err < 1e-8

# %% [markdown]
# ## Where a value is used twice, its gradients add
#
# In a graph a value can feed more than one node. The SK unit's branch outputs $U_m$ feed both
# the fuse step (through their sum) and the select step (weighted by the attention); a residual
# block's input feeds both its residual path and its shortcut. The chain rule sums over every
# path from the value to the loss:
#
# $$ L = f(u) + g(u) \quad\Rightarrow\quad
#    \frac{\partial L}{\partial u} = \frac{\partial f}{\partial u}
#    + \frac{\partial g}{\partial u}. $$
#
# In code: the backward pass *accumulates* (`+=`) into a value's gradient once per use. Here $h$
# feeds two heads, $L_2 = \sum g \odot h + \sum g_2 \odot h^2$:

# %%
g2 = rng.standard_normal((N, K))
dh_two_paths = g + g2 * 2 * h  # one term per use of h
dz_two = relu_backward(dh_two_paths, relu_cache)
dW_two = linear_backward(dz_two, linear_cache)[1]
numeric = numerical_gradient(lambda v: (lambda hh: g * hh + g2 * hh**2)(net(x, v, b)), W, 1.0)
assert rel_error(dW_two, numeric) < 1e-8
dW_one_path = linear_backward(relu_backward(g, relu_cache), linear_cache)[1]
assert rel_error(dW_one_path, numeric) > 1e-2  # forgetting a path is a plainly wrong gradient
print("two uses of h: the gradients of both add up; with one alone the check fails")

# %% [markdown]
# ## Summary
#
# - A network is a graph of operations; forward runs it node by node and keeps what each
#   backward step needs (the cache).
# - Backward runs the nodes in reverse, each turning the gradient of its output into gradients of
#   its inputs: a vector-Jacobian product, computed from the node's formula, never from its
#   Jacobian. For the layer here the Jacobian of $z$ with respect to $W$ has 300 entries, of
#   which 60 are not zero; a real convolution's would have about $3 \times 10^{11}$.
# - For $z = x W^\top + b$: $\partial L/\partial x = \delta W$, $\partial L/\partial W =
#   \delta^\top x$, $\partial L/\partial b = \sum_n \delta_n$ with $\delta = \partial L/\partial z$;
#   for ReLU, $\delta = \partial L/\partial h \odot [z > 0]$.
# - A value used twice receives the sum of the gradients of its uses.
# - Finite differences check a backward pass independently of its derivation: here they agree
#   with `relu_backward` and `linear_backward` to a relative error below $10^{-8}$, and plainly
#   disagree (above $10^{-2}$) when one of two paths is forgotten.
#
# ## Exercises
#
# 1. A sigmoid node $s = 1 / (1 + e^{-z})$ in place of the ReLU: its vector-Jacobian product is
#    $\partial L/\partial z = \partial L/\partial h \odot s (1 - s)$. Compute it for the
#    upstream gradient `g` as `dz_sigmoid` and make the check below pass.

# %%
s = 1 / (1 + np.exp(-z))  # the sigmoid's output, (N, K); g plays dL/ds
# BEGIN SOLUTION
dz_sigmoid = g * s * (1 - s)
# END SOLUTION
numeric = numerical_gradient(lambda v: 1 / (1 + np.exp(-v)), z, g)
assert rel_error(dz_sigmoid, numeric) < 1e-8

# %% [markdown]
# 2. The same $x$ feeds two layers, $L = \sum g \odot (x W^\top) + \sum g_3 \odot (x V^\top)$.
#    Write $\partial L / \partial x$ with the rule of this tutorial and make the check pass.

# %%
V = rng.standard_normal((K, D))
g3 = rng.standard_normal((N, K))
# BEGIN SOLUTION
dx_both = g @ W + g3 @ V
# END SOLUTION
numeric = numerical_gradient(lambda v: (lambda a, c: g * a + g3 * c)(v @ W.T, v @ V.T), x, 1.0)
assert rel_error(dx_both, numeric) < 1e-8

# %% [markdown]
# 3. How many non-zero entries does the Jacobian of $z = x W^\top + b$ with respect to $x$ have,
#    for $N$ images, $D$ inputs and $K$ outputs? Count them in `J_x` below and compare with your
#    formula.

# %%
J_x = np.zeros((N * K, N * D))  # d z[n, k] / d x[n', d]
for n in range(N):
    for k in range(K):
        for d in range(D):
            J_x[n * K + k, n * D + d] = W[k, d]
# BEGIN SOLUTION
nonzero_formula = N * K * D
# END SOLUTION
assert np.count_nonzero(J_x) == nonzero_formula
