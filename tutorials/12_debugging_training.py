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

from skscratch.activations import relu_forward
from skscratch.losses import softmax_cross_entropy
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.nn import ReLU
from skscratch.optim import SGD
from skscratch.plots import pyplot, show

rng = np.random.default_rng(0)
plt = pyplot()

CONFIG = SKNetConfig(stem=8, mids=(8, 16, 16), outs=(16, 32, 32), groups=4, L=8)


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
    losses, stats = [], []
    for _ in range(steps):
        logits = model.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits, input_grad=False)
        before = {name: p.data.copy() for name, p in model.named_parameters()}
        optimizer.step()
        stats.append(layer_stats(model, before))
        losses.append(loss)
    return np.array(losses), stats


# %% [markdown]
# ## What to record
#
# For every parameter tensor $w$ with gradient $g$ and update $\Delta w$ (after the step):
#
# - the gradient's size $\lVert g \rVert$: zero means the tensor does not learn, NaN or huge
#   values mean an explosion;
# - the update-to-weight ratio $\lVert \Delta w \rVert / \lVert w \rVert$: around $10^{-3}$ per
#   step is healthy for SGD (a rule of thumb from CS231n); $10^{-1}$ rewrites the weights every
#   few steps, $10^{-6}$ barely moves them.


# %%
def layer_stats(model, before):
    out = {}
    for name, p in model.named_parameters():
        if p.data.ndim < 2:
            continue  # the weight tensors (convolutions, FC layers) tell most
        update = np.linalg.norm(p.data - before[name])
        out[name] = (np.linalg.norm(p.grad), update / max(np.linalg.norm(before[name]), 1e-12))
    return out


losses, stats = overfit(new_model())
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


def with_broken_relus(model):
    for _, module in model.named_modules():
        for name, child in module.children.items():
            if type(child) is ReLU:
                broken = LeakyGradientReLU()
                broken.ops = child.ops
                module.children[name] = broken
    return model


broken_losses, broken_stats = overfit(with_broken_relus(new_model()))
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


good, bad = worst_error(new_model()), worst_error(with_broken_relus(new_model()))
print(f"stem weight, largest gradient entry: correct {good:.1e}, broken ReLU {bad:.1e}")
assert good < 1e-5 and bad > 1e-2

# %% [markdown]
# ## Update/weight ratios and the learning rate
#
# The ratios scale with the learning rate. At 0.05 the weight tensors move by about $10^{-3}$
# to $10^{-2}$ of their size per step; a learning rate ten times smaller moves them ten times
# less, and the batch is memorised much more slowly.

# %%
slow_losses, slow_stats = overfit(new_model(), lr=0.005)
names = list(stats[0])
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
assert 5 < first[0.05] / first[0.005] < 20
assert slow_losses[-1] > 10 * losses[-1]

# %% [markdown]
# ## Activations: a quick look at scale
#
# The spread of each stage's output should stay of order 1 through a freshly initialised
# network (batch norm and Kaiming initialisation see to it). A stage whose output is all zero
# (dead ReLUs) or grows by orders of magnitude is the next thing to look at.

# %%
model = new_model()
h = x
spreads = {}
for name in ("stem", "stages"):
    h = model.children[name].forward(h)
    spreads[name] = float(h.std())
dead = float(np.mean(relu_forward(h)[0] == 0))
print({k: f"{v:.2f}" for k, v in spreads.items()}, f"zeros after the last stage: {dead:.0%}")
assert all(0.1 < v < 10 for v in spreads.values())

# %% [markdown]
# ## Summary
#
# - First test of any network: overfit a handful of examples. It takes a minute and catches
#   bugs that stop learning, but not every wrong gradient: some still descend.
# - Check gradients against finite differences, in float64: that names a wrong backward pass.
# - Watch per-tensor gradient sizes and update/weight ratios (about $10^{-3}$ per step); they
#   scale with the learning rate.
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


def with_doubled_relus(model):
    for _, module in model.named_modules():
        for name, child in module.children.items():
            if type(child) is ReLU:
                doubled = DoubledGradientReLU()
                doubled.ops = child.ops
                module.children[name] = doubled
    return model


# BEGIN SOLUTION
check_finds_it = True
# END SOLUTION
assert (worst_error(with_doubled_relus(new_model())) > 1e-2) == check_finds_it

# %% [markdown]
# 2. Which of the learning rates 0.005, 0.05 and 0.5 memorises the batch fastest (lowest loss
#    after 30 steps)? Make the assert pass with your answer.

# %%
# BEGIN SOLUTION
fastest = 0.5
# END SOLUTION
final = {lr: overfit(new_model(), steps=30, lr=lr)[0][-1] for lr in (0.005, 0.05, 0.5)}
assert min(final, key=final.get) == fastest
