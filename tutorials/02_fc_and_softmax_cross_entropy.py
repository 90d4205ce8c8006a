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
# and every exponent is then at most 0.

# %%
z_big = np.array([[1000.0, 999.0, 0.0]])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.log(np.exp(z_big).sum()) - z_big[0, 0]
m = z_big.max()
stable = m + np.log(np.exp(z_big - m).sum()) - z_big[0, 0]
print(f"naive: {naive}, shifted: {stable:.6f}")
assert not np.isfinite(naive)
assert math.isclose(stable, softmax_cross_entropy(z_big, np.array([0]))[0], rel_tol=1e-12)
assert math.isclose(stable, math.log(1 + math.exp(-1)), rel_tol=1e-12)

# %% [markdown]
# ### Where training starts: $\ln 10 \approx 2.303$
#
# A freshly initialised network has no reason to prefer one class: its logits are small and
# nearly equal, every $p_{nk}$ is close to $1/K$, and the loss is close to $\log K$. For
# CIFAR-10 that is $\ln 10 = 2.303$. A first loss far from it means a bug or a bad
# initialisation, before any training.

# %%
K = 10
logits = 0.01 * rng.standard_normal((256, K))  # a fresh network's small logits
labels = rng.integers(0, K, 256)
loss, _ = softmax_cross_entropy(logits, labels)
print(f"loss of near-zero logits: {loss:.4f}, ln 10 = {math.log(10):.4f}")
assert abs(loss - math.log(10)) < 0.01

# %% [markdown]
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
# With the mean over $N$ rows: $\partial L / \partial z = (p - \text{onehot}(y)) / N$. First
# the long way, with the Jacobian of every row, then the collapsed formula:

# %%
N = 6
z = rng.standard_normal((N, K))
y = rng.integers(0, K, N)
p = np.exp(z - z.max(axis=1, keepdims=True))
p /= p.sum(axis=1, keepdims=True)

dz_long = np.zeros_like(z)
for n in range(N):
    dL_dp = np.zeros(K)
    dL_dp[y[n]] = -1 / p[n, y[n]] / N  # step 1, with the 1/N of the mean
    jacobian = np.diag(p[n]) - np.outer(p[n], p[n])  # step 2: p_k (delta_kj - p_j)
    dz_long[n] = dL_dp @ jacobian  # step 3
onehot = np.eye(K)[y]
dz_short = (p - onehot) / N
_, dz_package = softmax_cross_entropy(z, y)
np.testing.assert_allclose(dz_long, dz_short, atol=1e-15)
np.testing.assert_allclose(dz_package, dz_short, atol=1e-15)
print("step by step == (softmax - onehot) / N == softmax_cross_entropy's gradient")

# %% [markdown]
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

# %%
eps = 0.2
q = (1 - eps) * onehot + eps / K
_, dz_smooth = softmax_cross_entropy(z, y, smoothing=eps)
np.testing.assert_allclose(dz_smooth, (p - q) / N, atol=1e-15)
numeric = numerical_gradient(
    lambda v: np.asarray(softmax_cross_entropy(v, y, smoothing=eps)[0]), z, np.ones(())
)
assert rel_error(dz_smooth, numeric) < 1e-8
print("label-smoothed gradient == (softmax - q) / N, and finite differences agree")

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
#   computed after subtracting each row's maximum.
# - An untrained $K$-class classifier starts near $\ln K$: 2.303 for CIFAR-10.
# - Its gradient is $(\text{softmax}(z) - \text{onehot}(y)) / N$; with label smoothing,
#   $(\text{softmax}(z) - q) / N$. Written as one pair, it never divides by a probability.
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
