# %% [markdown]
# # 12. Debugging training: overfit one batch, and look inside
#
# **Goals.** After this tutorial you can
# - use "overfit one small batch" as the first test of any network and training loop;
# - record per-layer statistics while training: the spread of activations, the size of
#   gradients, and the ratio of each update to its weights;
# - recognise a broken backward pass in those numbers, before a long run wastes hours.
#
# **Prerequisites.** Tutorials 9 and 10 (a network's backward, SGD).
#
# **Time.** About 30 minutes.
#
# A network that trains badly rarely says why. Three cheap checks find most bugs: can it learn a
# handful of examples by heart; do its layers keep sensible scales; are the gradients right.

# %%
import numpy as np

from skscratch.losses import softmax_cross_entropy
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.nn import Linear, ReLU
from skscratch.optim import SGD
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)
plt = pyplot()

CONFIG = SKNetConfig(stem=8, depths=(1, 1, 1), mids=(8, 16, 16), outs=(16, 32, 32), groups=4, L=8)


def new_model():
    return SKResNeXt(CONFIG, seed=0, backend="reference")


# %% [markdown]
# ## Overfit one batch
#
# Sixteen images with random labels have nothing to generalise from: a network with enough
# parameters can only memorise them, and a correct one does so in a few dozen steps. If the
# loss does not fall to near 0, something is wrong in the model, the loss or the optimiser:
# no amount of data will help it.

# %%
x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
y = rng.integers(0, 10, 16)


def overfit(model, steps=60, lr=0.05):
    optimizer = SGD(model, lr=lr, momentum=0.9, weight_decay=0.0)
    losses, stats, acts = [], [], []
    for _ in range(steps):
        logits, act = forward_recording(model, x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits, input_grad=False)
        before = {name: p.data.copy() for name, p in model.named_parameters()}
        optimizer.step()
        stats.append(layer_stats(model, before))
        acts.append(act)
        losses.append(loss)
    return np.array(losses), stats, acts


# %% [markdown]
# ## What to record
#
# For the output $a$ of the stem and of every block, in each forward pass:
#
# - its spread (standard deviation), which should stay of order 1;
# - the fraction of its entries that are exactly 0 (ReLUs that let nothing through).
#
# For every parameter tensor $w$ with gradient $g$ and update $\Delta w$ (after the step):
#
# - the gradient's size $\lVert g \rVert$: zero means the tensor does not learn, NaN or huge
#   values mean an explosion;
# - the update-to-weight ratio $\lVert \Delta w \rVert / \lVert w \rVert$: around $10^{-3}$ per
#   step is healthy for SGD (a rule of thumb from CS231n); $10^{-1}$ rewrites the weights every
#   few steps, $10^{-6}$ barely moves them.


# %%
def forward_recording(model, x):
    """model.forward(x), one block at a time: also returns {layer: (spread, fraction of 0)}."""
    h = model.children["stem"].forward(x)
    act = {"stem": (float(h.std()), float(np.mean(h == 0)))}
    for i, stage in model.children["stages"].children.items():
        for j, block in stage.children.items():
            h = block.forward(h)
            act[f"stages.{i}.{j}"] = (float(h.std()), float(np.mean(h == 0)))
    return model.children["fc"].forward(model.children["pool"].forward(h)), act


def layer_stats(model, before):
    out = {}
    for name, p in model.named_parameters():
        if p.data.ndim < 2:
            continue  # the weight tensors (convolutions, FC layers) tell most
        update = np.linalg.norm(p.data - before[name])
        out[name] = (np.linalg.norm(p.grad), update / max(np.linalg.norm(before[name]), 1e-12))
    return out


model = new_model()
np.testing.assert_array_equal(forward_recording(model, x)[0], model.forward(x))  # the same pass
losses, stats, acts = overfit(new_model())
print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f} in {len(losses)} steps")
assert losses[-1] < 0.05 * losses[0]

# %% [markdown]
# ## A planted bug: ReLU that lets every gradient through
#
# Replace the backward pass of the `ReLU` modules at the end of every block by one that forgets
# the mask, $dx = dout$ everywhere: a classic slip. Nothing crashes, the shapes are right, and
# on this easy task the loss falls just as well: a gradient that is wrong but still points
# roughly downhill still descends. The overfitting test cannot see every bug.


# %%
class LeakyGradientReLU(ReLU):
    """The bug: ReLU's backward without its mask."""

    def backward(self, dout):
        self._saved_cache()  # the cache is consumed as before
        return dout


def with_relus_replaced(model, kind=LeakyGradientReLU):
    """`model` with every ReLU module replaced by a `kind` on the same backend."""
    for _, module in model.named_modules():
        for name, child in module.children.items():
            if type(child) is ReLU:
                replacement = kind()
                replacement.ops = child.ops
                module.children[name] = replacement
    return model


broken_losses, broken_stats, broken_acts = overfit(with_relus_replaced(new_model()))
print(f"broken ReLU: loss {broken_losses[0]:.3f} -> {broken_losses[-1]:.4f}")
assert broken_losses[-1] < 0.05 * broken_losses[0]  # it memorises the batch all the same

# %% [markdown]
# ## The gradient check names it
#
# The loss curve cannot say whether the gradients are right; a gradient check can. In float64
# with centred differences the correct network's gradient of the stem's weights agrees to about
# $10^{-7}$; the broken one's is off by order 1 (the stem lies below every broken ReLU).


# %%
def worst_error(model):
    model = model.astype(np.float64)
    xs, g = x[:4].astype(np.float64), rng.standard_normal((4, 10))
    model.forward(xs)
    model.backward(g, input_grad=False)
    p = dict(model.named_parameters())["stem.0.weight"]
    i = int(np.argmax(np.abs(p.grad)))
    h, old = 1e-6, p.data.flat[i]
    p.data.flat[i] = old + h
    plus = np.sum(model.forward(xs) * g)
    p.data.flat[i] = old - h
    minus = np.sum(model.forward(xs) * g)
    p.data.flat[i] = old
    numeric = (plus - minus) / (2 * h)
    return abs(p.grad.flat[i] - numeric) / max(abs(numeric), abs(p.grad.flat[i]))


good, bad = worst_error(new_model()), worst_error(with_relus_replaced(new_model()))
print(f"stem weight, largest gradient entry: correct {good:.1e}, broken ReLU {bad:.1e}")
assert good < 1e-5 and bad > 1e-2

# %% [markdown]
# ## Update/weight ratios and the learning rate
#
# The ratios scale with the learning rate. At 0.05 the weight tensors move by about $10^{-3}$
# to $10^{-2}$ of their size per step; a learning rate ten times smaller moves them ten times
# less, and the batch is memorised much more slowly.

# %%
slow_losses, slow_stats, _ = overfit(new_model(), lr=0.005)
names = list(stats[0])  # the weight tensors, from the stem to the FC layer
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
axes[0].semilogy(losses, label="lr 0.05")
axes[0].semilogy(slow_losses, label="lr 0.005")
axes[0].set(title="Overfitting 16 images", xlabel="step", ylabel="loss")
axes[0].legend(fontsize=8)
for ax, run, title in [(axes[1], stats, "lr 0.05"), (axes[2], slow_stats, "lr 0.005")]:
    for name in names:
        ax.semilogy([s[name][1] for s in run], lw=0.8)
    ax.axhline(1e-3, color="k", ls="--", lw=0.8)
    ax.set(title=f"update / weight per tensor, {title}", xlabel="step", ylim=(1e-6, 1))
fig.tight_layout()
show(fig, "12_overfit_and_ratios")
first = {lr: np.median([r for _, r in run[0].values()]) for lr, run in
         [(0.05, stats), (0.005, slow_stats)]}  # fmt: skip
print({lr: f"{v:.1e}" for lr, v in first.items()}, "median ratio in the first step")
assert 1e-3 < first[0.05] < 1e-2 and 5 < first[0.05] / first[0.005] < 20
assert slow_losses[-1] > 10 * losses[-1]

# %% [markdown]
# ## Activations, layer by layer
#
# The spread of each layer's output should stay of order 1 through a freshly initialised
# network (batch norm and Kaiming initialisation see to it), and about half of each output is 0
# after its ReLU. A layer whose output is all zero (dead ReLUs) or grows by orders of magnitude
# is the next thing to look at. `overfit` recorded both for every step; in the first:

# %%
spreads = {layer: spread for layer, (spread, _) in acts[0].items()}
zeros = {layer: zero for layer, (_, zero) in acts[0].items()}
print({k: f"{v:.2f}" for k, v in spreads.items()}, "spread")
print({k: f"{v:.0%}" for k, v in zeros.items()}, "zeros")
assert all(0.1 < v < 10 for v in spreads.values())
assert all(0.3 < v < 0.7 for v in zeros.values())

# %% [markdown]
# ## What the broken backward looks like in these statistics
#
# The correct and the broken network start from the same weights and see the same batch, so
# their first steps can be compared tensor by tensor. Their activations are the same (the
# forward pass is right) and stay close while they train. Their gradients are not: the FC
# layer lies above every broken ReLU and gets the same gradient, but below the last block's
# ReLU every gradient is too large, by a factor that grows with depth (each broken ReLU lets
# through the half of the gradient it should block, and the excess compounds block by block),
# to about 3 at the stem. The update/weight ratios follow: in the first step the median is
# more than twice the correct network's. A real bug has no correct twin to divide by, and the
# gradient check is what confirms it; what these plots show is where to suspect one: gradients
# and updates larger than the learning rate explains, more so towards the input, while the
# activations look healthy.

# %%
excess = {n: broken_stats[0][n][0] / stats[0][n][0] for n in names}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(list(excess.values()), "o")
axes[0].axhline(1, color="k", lw=0.8)
axes[0].set(title="first gradient, broken / correct", xlabel="weight tensor, stem ... FC",
            ylabel="ratio of norms")  # fmt: skip
for run, label, style in [(stats, "correct", "-"), (broken_stats, "broken ReLU", "--")]:
    axes[1].semilogy([np.median([s[n][1] for n in names]) for s in run], style, label=label)
axes[1].set(title="median update / weight", xlabel="step")
axes[1].legend(fontsize=8)
for i, layer in enumerate(acts[0]):
    color = f"C{i}"
    axes[2].plot([a[layer][0] for a in acts], "-", color=color, label=layer)
    axes[2].plot([a[layer][0] for a in broken_acts], "--", color=color)
axes[2].set(title="spread of each layer's output (dashed: broken)", xlabel="step", ylim=(0, 1.5))
axes[2].legend(fontsize=8)
fig.tight_layout()
show(fig, "12_broken_backward")
print({n: f"{excess[n]:.2f}" for n in ("stem.0.weight", "stages.2.0.conv3.weight", "fc.weight")})
assert excess["fc.weight"] == 1 and all(excess[n] > 1 for n in names if n != "fc.weight")
stage = {i: np.mean([excess[n] for n in names if n.startswith(f"stages.{i}.")]) for i in range(3)}
assert excess["stem.0.weight"] > stage[0] > stage[1] > stage[2] > 1
assert 2.5 < excess["stem.0.weight"] < 3.5
median_update = [np.median([run[0][n][1] for n in names]) for run in (stats, broken_stats)]
assert median_update[1] > 2 * median_update[0]
assert acts[0] == broken_acts[0]  # the same forward pass
drift = max(abs(b[k][0] / a[k][0] - 1) for a, b in zip(acts, broken_acts, strict=True) for k in a)
print(f"activations: largest relative difference of a spread over the run {drift:.0%}")
assert drift < 0.5

# %% [markdown]
# ## Summary
#
# - First test of any network: overfit a handful of examples. It takes a minute and catches
#   bugs that stop learning, but not every wrong gradient: some still descend.
# - Check gradients against finite differences, in float64: that names a wrong backward pass.
# - Watch per-tensor gradient sizes and update/weight ratios (about $10^{-3}$ per step); they
#   scale with the learning rate: ten times smaller, and the first step's median ratio is 5 to
#   20 times smaller.
# - Watch each layer's activations: at initialisation their spread stays between 0.1 and 10 and
#   about half of each ReLU output is 0.
# - A broken backward leaves the activations healthy (identical at the first step, within 50 %
#   over the run) and shows in the gradients: with ReLU's mask forgotten they are too large by a
#   factor that grows with depth, 1 at the FC layer to about 3 at the stem, and the median
#   update/weight ratio is more than doubled.
#
# ## Exercises
#
# 1. Plant a different bug: every `ReLU` module's backward returning `2 * dout` where it should
#    pass `dout`. Does the overfitting test notice? Does `worst_error`? Make the assert pass
#    with what the gradient check finds (True if it is above 1e-2).


# %%
class DoubledGradientReLU(ReLU):
    def backward(self, dout):
        return super().backward(2 * dout)


# BEGIN SOLUTION
check_finds_it = True
# END SOLUTION
assert (worst_error(with_relus_replaced(new_model(), DoubledGradientReLU)) > 1e-2) == check_finds_it

# %% [markdown]
# 2. Which of the learning rates 0.005, 0.05 and 0.5 memorises the batch fastest (lowest loss
#    after 30 steps)? Make the assert pass with your answer.

# %%
# BEGIN SOLUTION
fastest = 0.5
# END SOLUTION
final = {lr: overfit(new_model(), steps=30, lr=lr)[0][-1] for lr in (0.005, 0.05, 0.5)}
assert min(final, key=final.get) == fastest

# %% [markdown]
# 3. In the first step the correct and the broken network have the same weights and see the
#    same batch. Which weight tensors get exactly the same gradient in both? Give their names as
#    a set (think about where in the network the broken ReLUs are).

# %%
# BEGIN SOLUTION
unchanged = {"fc.weight"}
# END SOLUTION
assert unchanged == {n for n in stats[0] if broken_stats[0][n][0] == stats[0][n][0]}

# %% [markdown]
# 4. A weight tensor has norm 4 and its gradient norm 2. What update/weight ratio does the first
#    step of `overfit`'s optimiser give it (learning rate 0.01, Nesterov momentum 0.9, no weight
#    decay)? On the first step the velocity is the gradient itself. Work it out by hand.

# %%
# BEGIN SOLUTION
first_step_ratio = 0.01 * (1 + 0.9) * 2 / 4
# END SOLUTION
fc = Linear(3, 2, rng=np.random.default_rng(3))
weight = fc.params["weight"]
weight.data = (4 * weight.data / np.linalg.norm(weight.data)).astype(np.float32)
weight.grad = rng.standard_normal(weight.data.shape).astype(np.float32)
weight.grad *= 2 / np.linalg.norm(weight.grad)
fc.params["bias"].grad = np.zeros(2, dtype=np.float32)
before = {name: p.data.copy() for name, p in fc.named_parameters()}
SGD(fc, lr=0.01, momentum=0.9, weight_decay=0.0).step()
assert np.isclose(layer_stats(fc, before)["weight"][1], first_step_ratio, rtol=1e-4)
