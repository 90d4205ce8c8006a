# %% [markdown]
# # 2. The classifier's end: a fully connected layer and softmax cross-entropy
#
# **Goals.** After this tutorial you can
# - compute the softmax cross-entropy loss without overflow (log-sum-exp);
# - say what loss an untrained 10-class network should start at, and why;
# - derive its gradient step by step through the softmax's Jacobian, then collapse it to
#   $(\text{softmax} - \text{onehot}) / N$, and the label-smoothed version to
#   $(\text{softmax} - q) / N$;
# - train a linear classifier with these two pairs and plain gradient descent.
#
# **Prerequisites.** Tutorial 1 (vector-Jacobian products); exp and log.
#
# **Time.** About 30 minutes.
#
# Every network in skscratch ends the same way: global average pooling gives one vector per
# image, a fully connected layer maps it to 10 logits, and the loss compares them with the label.

# %%
import math

import numpy as np

from skscratch.assignment.student import check
from skscratch.gradcheck import numerical_gradient, rel_error
from skscratch.linear import linear_backward, linear_forward
from skscratch.losses import softmax_cross_entropy
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)

# %% [markdown]
# ## The loss
#
# For logits $z \in \mathbb{R}^{N \times K}$ and labels $y_n \in \{0, \dots, K-1\}$, the softmax
# turns each row into probabilities and the loss is the mean negative log-probability of the
# label:
#
# $$ p_{nk} = \frac{e^{z_{nk}}}{\sum_j e^{z_{nj}}}, \qquad
#    L = -\frac{1}{N} \sum_n \log p_{n y_n}
#      = \frac{1}{N} \sum_n \Big( \log \sum_j e^{z_{nj}} - z_{n y_n} \Big). $$
#
# ### Log-sum-exp without overflow
#
# $e^{z}$ overflows float64 above $z \approx 709$. Subtracting the row's largest logit $m_n$
# first changes nothing, since $\log \sum_j e^{z_{nj}} = m_n + \log \sum_j e^{z_{nj} - m_n}$,
# and every exponent is then at most 0. Without the shift, a row with a logit of 1000 already
# gives no number at all:

# %%
z_big = np.array([[1000.0, 999.0, 0.0]])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.log(np.exp(z_big).sum()) - z_big[0, 0]
print(f"naive: {naive}")
assert not np.isfinite(naive)

# %% [markdown]
# With the shift the exponents are $e^{0}, e^{-1}, e^{-1000}$, and for label 0 the loss is
# $\log(1 + e^{-1} + e^{-1000})$, which in float64 is $\log(1 + e^{-1}) \approx 0.3133$.
#
# ## The gradient, step by step
#
# Take one row (drop $n$) and write $L = -\log p_y$. Two nodes: the softmax $p = s(z)$ and the
# negative log of one entry.
#
# 1. $\partial L / \partial p_k = -1/p_y$ if $k = y$, else 0.
# 2. The softmax's Jacobian: $\partial p_k / \partial z_j = p_k (\delta_{kj} - p_j)$.
# 3. The vector-Jacobian product:
#    $\partial L / \partial z_j = \sum_k \frac{\partial L}{\partial p_k} p_k (\delta_{kj} - p_j)
#    = -\frac{1}{p_y} p_y (\delta_{yj} - p_j) = p_j - \delta_{yj}.$
#
# First the long way, with the Jacobian of every row (and the $1/N$ of the mean):

# %%
N, K = 6, 10
z = rng.standard_normal((N, K))
y = rng.integers(0, K, N)
p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # the definition; these logits are small

dz_long = np.zeros_like(z)
for n in range(N):
    dL_dp = np.zeros(K)
    dL_dp[y[n]] = -1 / p[n, y[n]] / N  # step 1, with the 1/N of the mean
    jacobian = np.diag(p[n]) - np.outer(p[n], p[n])  # step 2: p_k (delta_kj - p_j)
    dz_long[n] = dL_dp @ jacobian  # step 3
# Adding a constant to a row's logits changes no probability, so each row's gradient sums to 0.
np.testing.assert_allclose(dz_long.sum(axis=1), 0, atol=1e-15)
print("dL/dz, step by step, row 0:", np.round(dz_long[0], 4))

# %% [markdown]
# Collapsed, step 3 says it all: with the mean over $N$ rows,
#
# $$ \frac{\partial L}{\partial z} = \frac{1}{N} \big( p - \operatorname{onehot}(y) \big). $$
#
# The softmax's $1/p_y$ and its Jacobian's $p_y$ cancel: the collapsed form never divides by a
# probability, so it is exact even where $p_y$ underflows to 0, where the step-by-step form
# would divide by zero. That is why losses are written as one pair, softmax and log together.
#
# ### Label smoothing
#
# Training towards targets $q = (1-\varepsilon)\,\text{onehot}(y) + \varepsilon / K$ instead
# of one-hot ones gives $L = \frac{1}{N}\sum_n(\log \sum_j e^{z_{nj}} - \sum_k q_{nk} z_{nk})$,
# and the same collapse gives $\partial L / \partial z = (p - q) / N$. skscratch trains with
# $\varepsilon = 0.2$.
#
# ### Your turn: `softmax_cross_entropy` (assignment exercise `softmax_ce`)
#
# In a student copy (`python -m skscratch assignment make`), the body of
# `softmax_cross_entropy` in `skscratch/losses.py` is yours to write, from the formulas above:
# the mean loss and its gradient, for the targets $q$ (built for you just before, one-hot or
# smoothed). Shift every row by its largest logit before any exponential, and return the
# collapsed gradient, which never divides by a probability. The cell below runs the exercise's
# visible checks on it; the rest of the chapter uses your function.

# %%
assert check("softmax_ce") == 0, "exercise softmax_ce: see the failures above"

# %% [markdown]
# ## The pair against the derivation
#
# `softmax_cross_entropy(logits, labels, smoothing=...)` returns the loss and its gradient.
# On the row that overflowed it gives $\log(1 + e^{-1})$; its gradient is the step-by-step one;
# where the label's probability underflows to 0 its gradient is still exact, while the step by
# step form gives NaN; and the label-smoothed gradient matches both the same three steps (with
# $\partial L / \partial p_k = -q_k / p_k$) and finite differences.

# %%
loss_big, _ = softmax_cross_entropy(z_big, np.array([0]))
print(f"naive: {naive}, shifted: {loss_big:.6f}")
assert math.isclose(loss_big, math.log(1 + math.exp(-1)), rel_tol=1e-12)
assert round(loss_big, 4) == 0.3133

_, dz_package = softmax_cross_entropy(z, y)
np.testing.assert_allclose(dz_package, dz_long, atol=1e-15)
print("step by step == (softmax - onehot) / N == softmax_cross_entropy's gradient")

z_far = np.array([[0.0, -1000.0]])  # label 1: its probability e^-1000 underflows to 0
loss_far, dz_far = softmax_cross_entropy(z_far, np.array([1]))
assert loss_far == 1000.0 and np.array_equal(dz_far, [[1.0, -1.0]])
with np.errstate(divide="ignore", invalid="ignore"):
    p_far = np.exp(z_far[0]) / np.exp(z_far[0]).sum()
    step_by_step = (-1 / p_far[1]) * (np.diag(p_far) - np.outer(p_far, p_far))[1]
print(f"p_y = {p_far[1]}: collapsed {dz_far[0]}, step by step {step_by_step}")
assert not np.all(np.isfinite(step_by_step))

eps = 0.2
q = (1 - eps) * np.eye(K)[y] + eps / K
dz_long_smooth = np.stack(
    [(-q[n] / p[n] / N) @ (np.diag(p[n]) - np.outer(p[n], p[n])) for n in range(N)]
)
_, dz_smooth = softmax_cross_entropy(z, y, smoothing=eps)
np.testing.assert_allclose(dz_smooth, dz_long_smooth, atol=1e-15)
numeric = numerical_gradient(
    lambda v: np.asarray(softmax_cross_entropy(v, y, smoothing=eps)[0]), z, np.ones(())
)
assert rel_error(dz_smooth, numeric) < 1e-8
print("label-smoothed gradient == (softmax - q) / N, and finite differences agree")

# %% [markdown]
# ### Where training starts: $\ln 10 \approx 2.303$
#
# A freshly initialised network has no reason to prefer one class: its logits are small and
# nearly equal, every $p_{nk}$ is close to $1/K$, and the loss is close to $\log K$. For
# CIFAR-10 that is $\ln 10 = 2.303$. A first loss far from it means a bug or a bad
# initialisation, before any training.

# %%
logits = 0.01 * rng.standard_normal((256, K))  # a fresh network's small logits
labels = rng.integers(0, K, 256)
loss, _ = softmax_cross_entropy(logits, labels)
print(f"loss of near-zero logits: {loss:.4f}, ln 10 = {math.log(10):.4f}")
assert abs(loss - math.log(10)) < 0.01

# %% [markdown]
# ## A linear classifier, trained
#
# The two pairs are already a classifier: logits $= x W^\top + b$, softmax cross-entropy, and
# a step against the gradient. Three classes of points in the plane, each a blob, and 200 steps
# of gradient descent:

# %%
centres = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
cls = rng.integers(0, 3, 300)
points = centres[cls] + rng.standard_normal((300, 2))
W = 0.01 * rng.standard_normal((3, 2))
b = np.zeros(3)
losses = []
for _ in range(200):
    logits, cache = linear_forward(points, W, b)
    loss, dlogits = softmax_cross_entropy(logits, cls)
    _, dW, db = linear_backward(dlogits, cache)
    W, b = W - 0.5 * dW, b - 0.5 * db
    losses.append(loss)
accuracy = np.mean((points @ W.T + b).argmax(axis=1) == cls)
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, training accuracy {accuracy:.1%}")
assert abs(losses[0] - math.log(3)) < 0.05 and losses[-1] < 0.5 * losses[0]
assert accuracy > 0.85

plt = pyplot()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
ax1.plot(losses)
ax1.axhline(math.log(3), color="gray", ls="--", label="ln 3")
ax1.set(xlabel="step", ylabel="loss", title="Gradient descent")
ax1.legend()
gx, gy = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-4, 5, 200))
grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
ax2.contourf(gx, gy, (grid @ W.T + b).argmax(axis=1).reshape(gx.shape), alpha=0.2, levels=2)
ax2.scatter(points[:, 0], points[:, 1], c=cls, s=8)
ax2.set(title="Decision regions", xticks=[], yticks=[])
fig.tight_layout()
show(fig, "02_linear_classifier")

# %% [markdown]
# ## Summary
#
# - Softmax cross-entropy: $L = \frac{1}{N} \sum_n (\operatorname{logsumexp}(z_n) - z_{n y_n})$,
#   computed after subtracting each row's maximum: the row $(1000, 999, 0)$, which overflows
#   without the shift, gives $\log(1 + e^{-1}) \approx 0.3133$ with it.
# - An untrained $K$-class classifier starts near $\ln K$: 2.303 for CIFAR-10.
# - Its gradient, step by step through the softmax's Jacobian, collapses to
#   $(\text{softmax}(z) - \text{onehot}(y)) / N$; with label smoothing,
#   $(\text{softmax}(z) - q) / N$. Written as one pair, it never divides by a probability: where
#   the label's probability underflows to 0 it is still exact, and the step-by-step form is NaN.
# - A fully connected layer and this loss are a linear classifier already.
#
# ## Exercises
#
# 1. With 100 classes, what loss should an untrained network start at? Make the assert pass.

# %%
# BEGIN SOLUTION
start_100 = math.log(100)
# END SOLUTION
assert abs(softmax_cross_entropy(np.zeros((4, 100)), np.arange(4))[0] - start_100) < 1e-12

# %% [markdown]
# 2. For one row with $K = 3$, logits $(2, 1, 0)$ and label 0, compute $\partial L/\partial z$
#    by hand (a calculator for the exponentials) and check it.

# %%
# BEGIN SOLUTION
e = np.exp([2.0, 1.0, 0.0])
by_hand = e / e.sum() - np.array([1.0, 0.0, 0.0])
# END SOLUTION
np.testing.assert_allclose(softmax_cross_entropy(np.array([[2.0, 1.0, 0.0]]), [0])[1][0], by_hand)

# %% [markdown]
# 3. Label smoothing stops rewarding larger margins: for $K = 4$ and $\varepsilon = 0.2$, at
#    what gap between the label's logit and the (equal) others is the smoothed loss smallest?
#    (Set the gradient to zero: the softmax must equal $q$.)

# %%
# BEGIN SOLUTION
best_gap = math.log((1 - 0.2 + 0.2 / 4) / (0.2 / 4))
# END SOLUTION
gaps = np.linspace(0, 6, 6001)
smoothed = [
    softmax_cross_entropy(np.array([[gap, 0, 0, 0]]), [0], smoothing=0.2)[0] for gap in gaps
]
assert abs(gaps[int(np.argmin(smoothed))] - best_gap) < 1e-3

# %% [markdown]
# 4. Training runs in float32, whose exponential overflows much earlier than float64's. Above
#    which logit does `np.exp(np.float32(z))` give `inf`? Give it to two decimals. (The largest
#    float32 is `np.finfo(np.float32).max`.)

# %%
# BEGIN SOLUTION
float32_limit = math.log(float(np.finfo(np.float32).max))
# END SOLUTION
with np.errstate(over="ignore"):
    assert np.isfinite(np.exp(np.float32(float32_limit - 0.01)))
    assert np.isinf(np.exp(np.float32(float32_limit + 0.01)))
