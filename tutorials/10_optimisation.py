# %% [markdown]
# # 10. Optimisation: SGD, momentum, weight decay, schedules and initialisation
#
# **Goals.** After this tutorial you can
# - write the updates of SGD, momentum and Nesterov momentum, and see on a narrow valley why
#   momentum helps;
# - say what weight decay adds to the gradient, and which parameters skscratch decays;
# - read the learning-rate schedule of `python -m skscratch train` (warm-up, then a linear or
#   cosine fall) from `skscratch.optim.learning_rate`;
# - see why the initial weights' scale matters (Kaiming's $\sqrt{2 / \text{fan-in}}$), and pick
#   a learning rate with a sweep.
#
# **Prerequisites.** Tutorials 1 and 2.
#
# **Time.** About 40 minutes.

# %%
import numpy as np

from skscratch.linear import linear_backward, linear_forward
from skscratch.losses import softmax_cross_entropy
from skscratch.nn import Conv2d, Linear, Module
from skscratch.optim import SGD, learning_rate
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)
plt = pyplot()

# %% [markdown]
# ## A narrow valley
#
# The loss $f(w) = \tfrac12 (a w_1^2 + c w_2^2)$ with $a = 1$, $c = 100$ is a narrow valley: its
# curvature across is 100 times that along it. Its gradient is $(a w_1, c w_2)$. Plain gradient
# descent, $w \leftarrow w - \eta \nabla f$, must keep $\eta < 2/c$ or it diverges across the
# valley,
# and then crawls along it: after $t$ steps the along-valley coordinate is $(1 - \eta a)^t w_1$.
#
# Momentum keeps a velocity, $v \leftarrow \mu v + \nabla f$, $w \leftarrow w - \eta v$: steps
# along the valley, which agree from one step to the next, add up (to $1/(1-\mu)$ times the
# gradient), while steps across it, which alternate in sign, partly cancel. The velocity also
# carries it past the minimum along the valley, and back (the dip near step 24 below). Nesterov's
# variant, $w \leftarrow w - \eta (\nabla f + \mu v)$ as `torch.optim.SGD` writes it, looks
# one step ahead and damps the oscillation across the valley.

# %%
a, c = 1.0, 100.0


def grad(w):
    return np.array([a * w[0], c * w[1]])


def run(lr, momentum=0.0, nesterov=False, steps=60):
    w, v, path = np.array([-4.0, 1.0]), np.zeros(2), []
    for _ in range(steps):
        path.append(w.copy())
        g = grad(w)
        v = momentum * v + g
        w = w - lr * (g + momentum * v if nesterov else v if momentum else g)
    return np.array(path)


paths = {
    "SGD, lr 0.019": run(0.019),
    "momentum 0.9, lr 0.01": run(0.01, 0.9),
    "Nesterov 0.9, lr 0.01": run(0.01, 0.9, nesterov=True),
}
gx, gy = np.meshgrid(np.linspace(-4.5, 1, 200), np.linspace(-1.3, 1.3, 200))
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
ax.contour(gx, gy, 0.5 * (a * gx**2 + c * gy**2), levels=12, colors="lightgray")
for name, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], ".-", ms=3, lw=1, label=name)
    ax2.semilogy(np.linalg.norm(path, axis=1), label=name)
ax.set(title="60 steps on a narrow valley", xlabel="w1", ylabel="w2")
ax.legend(fontsize=8)
ax2.set(title="distance to the minimum", xlabel="step")
ax2.legend(fontsize=8)
fig.tight_layout()
show(fig, "10_momentum")
final = {name: np.linalg.norm(path[-1]) for name, path in paths.items()}
print({name: f"{d:.2e}" for name, d in final.items()})
assert final["momentum 0.9, lr 0.01"] < final["SGD, lr 0.019"] / 3
assert final["Nesterov 0.9, lr 0.01"] < final["SGD, lr 0.019"] / 3
overshoot = int(np.argmax(paths["momentum 0.9, lr 0.01"][:, 0] > 0))  # first step past w1 = 0
print(f"momentum passes the minimum along the valley at step {overshoot}")
assert 20 <= overshoot <= 28

# %% [markdown]
# ## skscratch's SGD is that update, with weight decay
#
# `skscratch.optim.SGD` applies, to every parameter $p$ with gradient $g$:
#
# $$ g \leftarrow g + \lambda p \;(\text{matrices only}), \quad v \leftarrow \mu v + g, \quad
#    p \leftarrow p - \eta\,(g + \mu v) \;(\text{Nesterov}). $$
#
# Weight decay $\lambda p$ is the gradient of $\tfrac{\lambda}{2}\lVert p\rVert^2$: a pull of
# every weight towards 0. By convention it applies to the convolution and FC weights, not to the
# one-dimensional parameters (batch-norm scales and shifts, biases). One step by hand:


# %%
class Tiny(Module):
    def __init__(self):
        super().__init__()
        self.children["fc"] = Linear(3, 2, rng=np.random.default_rng(1))


model = Tiny()
weight, bias = model.children["fc"].params["weight"], model.children["fc"].params["bias"]
weight.grad = np.ones_like(weight.data)
bias.grad = np.ones_like(bias.data)
before_w, before_b = weight.data.copy(), bias.data.copy()
optimizer = SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
optimizer.step()
g = 1 + 0.01 * before_w  # decayed: a matrix
np.testing.assert_allclose(weight.data, before_w - 0.1 * (g + 0.9 * g), rtol=1e-6)
np.testing.assert_allclose(bias.data, before_b - 0.1 * (1 + 0.9 * 1), rtol=1e-6)  # not decayed
print("one Nesterov step with weight decay on the matrix and none on the bias, as written")

# %% [markdown]
# ## The schedule
#
# Large steps on random weights are unstable, and small steps at the end settle the weights
# into a minimum. `learning_rate(step, total, peak=..., warmup_steps=...)` rises linearly
# during the warm-up, from $\text{peak}/w$ on the first step to the peak on step $w - 1$, then
# falls towards 0 along a straight line ("one-cycle", skscratch's default) or a half cosine.

# %%
total, warmup = 1000, 100
steps = np.arange(total)
fig, ax = plt.subplots(figsize=(6, 3))
for kind in ("onecycle", "cosine"):
    rates = [learning_rate(s, total, peak=0.2, warmup_steps=warmup, kind=kind) for s in steps]
    ax.plot(steps, rates, label=kind)
    assert np.isclose(rates[0], 0.2 / warmup) and np.isclose(max(rates), 0.2)
    assert int(np.argmax(rates)) == warmup - 1 and rates[-1] < 0.01
ax.set(xlabel="step", ylabel="learning rate", title="Warm-up, then a fall to 0")
ax.legend()
fig.tight_layout()
show(fig, "10_schedules")

# %% [markdown]
# ## Initialisation: keep the signal's scale
#
# Through a stack of layers $h \leftarrow \operatorname{ReLU}(W h)$ with $W$ drawn from
# $\mathcal{N}(0, \sigma^2)$ and fan-in $n$, each layer multiplies the mean square of the
# signal by about $n \sigma^2 / 2$ (the ReLU keeps half of it). With $\sigma^2 = 2/n$ (He et
# al. 2015, "Kaiming") the factor is 1 and the signal keeps its scale through any depth; a
# little less and it vanishes, a little more and it explodes.

# %%
n, depth = 256, 30
x0 = rng.standard_normal((512, n))
scales = {"0.8 x Kaiming": 0.8, "Kaiming, sqrt(2/n)": 1.0, "1.2 x Kaiming": 1.2}
fig, ax = plt.subplots(figsize=(6, 3.2))
rms_last = {}
for name, factor in scales.items():
    h, rms = x0, []
    for _ in range(depth):
        w = rng.standard_normal((n, n)) * factor * np.sqrt(2 / n)
        h = np.maximum(h @ w.T, 0)
        rms.append(np.sqrt(np.mean(h**2)))
    rms_last[name] = rms[-1]
    ax.semilogy(range(1, depth + 1), rms, label=name)
ax.set(xlabel="layer", ylabel="rms of the signal", title="30 layers of linear + ReLU")
ax.legend()
fig.tight_layout()
show(fig, "10_initialisation")
print({k: f"{v:.2e}" for k, v in rms_last.items()})
assert rms_last["0.8 x Kaiming"] < 0.01 < 0.1 < rms_last["Kaiming, sqrt(2/n)"] < 10
assert rms_last["1.2 x Kaiming"] > 100

# %% [markdown]
# ## A learning-rate sweep
#
# The peak learning rate matters most. A sweep trains the same model briefly at several rates
# and keeps the one whose loss falls furthest: too small learns slowly, too large overshoots
# (with a bounded gradient, as softmax cross-entropy has, it oscillates rather than diverges).
# Here a linear classifier on overlapping points of 10 classes, 100 steps of plain gradient
# descent at each rate:

# %%
centres = rng.standard_normal((10, 20))
labels = rng.integers(0, 10, 2000)
points = (centres[labels] + 1.5 * rng.standard_normal((2000, 20))) * 3


def final_loss(lr, steps=100):
    w, b = np.zeros((10, 20)), np.zeros(10)
    for _ in range(steps):
        logits, cache = linear_forward(points, w, b)
        _, dlogits = softmax_cross_entropy(logits, labels)
        _, dw, db = linear_backward(dlogits, cache)
        w, b = w - lr * dw, b - lr * db
    return softmax_cross_entropy(points @ w.T + b, labels)[0]


rates = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
results = [final_loss(lr) for lr in rates]
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogx(rates, results, "o-")
ax.set(xlabel="learning rate", ylabel="loss after 100 steps", title="Learning-rate sweep")
fig.tight_layout()
show(fig, "10_lr_sweep")
best = int(np.argmin(results))
print({lr: f"{r:.3f}" for lr, r in zip(rates, results, strict=True)}, "best:", rates[best])
assert 0 < best < len(rates) - 1  # a minimum inside the range: both ends are worse
assert results[0] > 2 * results[best] and results[-1] > 2 * results[best]

# %% [markdown]
# ## Summary
#
# - Momentum sums the gradients that agree from step to step and cancels those that alternate:
#   it crosses a narrow valley's floor far faster than plain SGD at a stable learning rate
#   (after 60 steps momentum and Nesterov are more than 3 times closer to the minimum).
# - skscratch's SGD: Nesterov momentum 0.9, weight decay on matrices only.
# - The schedule: a linear warm-up from $\text{peak}/w$ to the peak on step $w - 1$, then a fall
#   to 0, straight or along a half cosine.
# - Initialise so that each layer keeps the signal's scale: $\sigma^2 = 2/\text{fan-in}$ before a
#   ReLU. After 30 layers, $0.8\times$ that scale leaves less than 0.01 of the signal's rms and
#   $1.2\times$ multiplies it by more than 100.
# - A short sweep finds a workable peak learning rate: both ends of the range end with more than
#   twice the best rate's loss.
#
# ## Exercises
#
# 1. For plain gradient descent on $f(w) = \tfrac12 c w^2$, the largest stable learning rate
#    is $2/c$. What is it for the valley above? Make the assert pass.

# %%
# BEGIN SOLUTION
largest_stable = 2 / c
# END SOLUTION
assert np.linalg.norm(run(largest_stable * 0.99, steps=400)[-1]) < 10
assert np.linalg.norm(run(largest_stable * 1.01, steps=400)[-1]) > 1e3

# %% [markdown]
# 2. With momentum $\mu$ and a constant gradient $g$, the velocity tends to $g / (1 - \mu)$.
#    How many times larger than plain SGD's is the step then, for $\mu = 0.9$?

# %%
# BEGIN SOLUTION
amplification = 1 / (1 - 0.9)
# END SOLUTION
v = 0.0
for _ in range(500):
    v = 0.9 * v + 1.0
assert np.isclose(v, amplification)

# %% [markdown]
# 3. `python -m skscratch train` uses the schedule above. With a peak of 0.2, 100 warm-up steps
#    and 1000 steps in all, what are the learning rates at step 49 (counting from 0) and, with
#    the one-cycle fall, at step 775? Work them out from the description, then check.

# %%
# BEGIN SOLUTION
lr_49 = 0.2 * (49 + 1) / 100  # warm-up: peak * (step + 1) / warmup
lr_775 = 0.2 * (1 - (775 - 100) / (1000 - 100))  # a straight line from the peak to 0
# END SOLUTION
assert np.isclose(learning_rate(49, 1000, peak=0.2, warmup_steps=100, kind="onecycle"), lr_49)
assert np.isclose(learning_rate(775, 1000, peak=0.2, warmup_steps=100, kind="onecycle"), lr_775)

# %% [markdown]
# 4. skscratch's `Conv2d` draws its weights from $\mathcal{N}(0, 2/n)$ with $n$ its fan-*out*,
#    $C_\text{out}/G \cdot KH \cdot KW$: the number of outputs each input feeds, which is the
#    fan-in of the gradient on its way back, so the backward pass keeps its scale. What is the
#    standard deviation of the weights of a 3x3 convolution from 64 to 128 channels
#    (`groups=1`)?

# %%
# BEGIN SOLUTION
conv_std = np.sqrt(2 / (128 * 3 * 3))
# END SOLUTION
drawn = Conv2d(64, 128, 3, rng=np.random.default_rng(2)).params["weight"].data
assert abs(drawn.std() / conv_std - 1) < 0.02  # 73,728 draws: their spread is within 1 %
