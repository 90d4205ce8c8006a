# %% [markdown]
# # 11. Training a small SK network on CIFAR-10
#
# **Goals.** After this tutorial you can
# - load CIFAR-10, augment it (random crops and flips, and cutout) and normalise it with
#   statistics of the training images alone;
# - build an SK-ResNeXt on either backend and check that the two compute the same;
# - write the training loop out: minibatches, the learning-rate schedule, label-smoothed loss,
#   SGD with Nesterov momentum, evaluation with test-time flips and shifts;
# - tell from the curves and the per-class accuracy whether the network learnt, and repeat a
#   run exactly.
#
# **Prerequisites.** Tutorials 2 (softmax cross-entropy and label smoothing), 8 and 9 (the SK
# unit, the block and the network) and 10 (SGD, momentum, weight decay, the schedule).
#
# **Time.** About 30 minutes to read; the run takes from seconds to minutes (below).
#
# The earlier tutorials built every operation and the SK unit from forward/backward pairs. Here
# they come together: an SK-ResNeXt learns to classify CIFAR-10 images. We go through
# the data, the augmentation, the normalisation, the model, and then write the training loop out
# with skscratch's own pieces, exactly as `skscratch.train` runs it.
#
# **Two backends.** A network runs on one of two sets of operation pairs, chosen when it is
# built: `backend="reference"`, the plain-NumPy pairs of tutorials 3 to 8 (in the course, the
# functions you write), or `backend="fast"`, compiled versions of them from `skscratch.fast`,
# which skscratch's tests check against the reference pairs. We train on the fast backend, after
# checking on one batch that the two compute the same.
#
# **How big a run.** Training in NumPy on a CPU is slow, so the size comes from the environment:
#
# - `SKSCRATCH_TUTORIAL_SMALL=1` (what CI sets): the "tiny" model (8 k parameters), 1000 training
#   images, 2 epochs. About 10 seconds on two cores once the fast backend's kernels are compiled
#   (numba caches them on disk; the first run compiles them and takes longer).
# - otherwise: the default model (674 k parameters), 10000 training images, 3 epochs, evaluated
#   on the whole test set after each epoch. Roughly 5 minutes on two cores, the evaluations
#   included (the check against `run_training` at the end runs in the small run only).
# - `SKSCRATCH_TUTORIAL_SUBSET` and `SKSCRATCH_TUTORIAL_EPOCHS` override the number of training
#   images and of epochs.

# %%
import inspect
import math
import os
import tempfile
import time

import numpy as np

import skscratch
from skscratch.augmentation import alternating_flips
from skscratch.data import augment, channel_stats, iterate_batches, load_cifar10, normalize
from skscratch.evaluation import evaluate
from skscratch.gradcheck import rel_error
from skscratch.linear import linear_backward, linear_forward
from skscratch.losses import softmax_cross_entropy
from skscratch.models import PRESETS, SKResNeXt, count_macs
from skscratch.optim import SGD, learning_rate
from skscratch.plots import pyplot, show
from skscratch.train import TrainConfig, run_training, train_step

# The process settings `python -m skscratch train` starts with (how idle threads wait, reuse of
# freed memory; see skscratch.tuning): importing skscratch changes none of them by itself.
print("process settings:", skscratch.tune_process())

SMALL = os.environ.get("SKSCRATCH_TUTORIAL_SMALL") == "1"
preset = "tiny" if SMALL else "default"
config = TrainConfig(
    epochs=int(os.environ.get("SKSCRATCH_TUTORIAL_EPOCHS", 2 if SMALL else 3)),
    batch_size=64 if SMALL else 128,
    subset=int(os.environ.get("SKSCRATCH_TUTORIAL_SUBSET", 1000 if SMALL else 10000)),
    test_subset=1000 if SMALL else None,  # None: all 10000 test images
)
print(f"model {preset!r}, {config}")

# %% [markdown]
# ## The data
#
# CIFAR-10 has 50000 training and 10000 test images, 32x32 pixels in colour, in 10 classes of
# equal size. `load_cifar10` returns them as uint8 arrays in NCHW layout, the labels as integers
# 0..9, and the class names.

# %%
data = load_cifar10()
print(data.x_train.shape, data.x_train.dtype)  # (N, C, H, W) = (50000, 3, 32, 32) uint8
print(data.y_train.shape, data.x_test.shape)  # (50000,) (10000, 3, 32, 32)
print(data.label_names)
assert data.x_train.shape == (50000, 3, 32, 32) and data.x_test.shape == (10000, 3, 32, 32)
assert np.all(np.bincount(data.y_train) == 5000) and np.all(np.bincount(data.y_test) == 1000)

# %%
plt = pyplot()
fig, axes = plt.subplots(2, 5, figsize=(10, 4.6))
for k, ax in enumerate(axes.flat):
    i = int(np.flatnonzero(data.y_train == k)[0])  # the first training image of class k
    ax.imshow(data.x_train[i].transpose(1, 2, 0))  # (H, W, 3) for imshow
    ax.set_title(f"{k}: {data.label_names[k]}")
    ax.axis("off")
fig.suptitle("CIFAR-10: one training image per class")
fig.tight_layout()
show(fig, "11_cifar10_examples")

# %% [markdown]
# We train on the first `config.subset` training images. The first images of CIFAR-10 are in
# random order, so a prefix has every class in about equal numbers.

# %%
x_train, y_train = data.x_train[: config.subset], data.y_train[: config.subset]
x_test, y_test = data.x_test[: config.test_subset], data.y_test[: config.test_subset]
print(x_train.shape, x_test.shape)  # (subset, 3, 32, 32), (test images, 3, 32, 32)
print("training images per class:", np.bincount(y_train, minlength=10))

# %% [markdown]
# ## Augmentation
#
# A network that sees the same 1000 or 10000 images every epoch soon learns them by heart. Two
# cheap changes make every epoch's copy a little different without changing what it shows
# (the usual CIFAR recipe): pad the image with 4 zero pixels on each side and cut out a random
# 32x32 window (a shift by $-4 \dots 4$ pixels in each direction), then mirror it left-right
# with probability 1/2. `skscratch.data.augment` does both, independently per image; a third,
# cutout, is an option of the recipe, below.

# %%
image = data.x_train[int(np.flatnonzero(data.y_train == 7)[0])]  # a horse, (3, 32, 32)
copies = augment(np.repeat(image[None], 8, axis=0), np.random.default_rng(0))
print(copies.shape, copies.dtype)  # (8, 3, 32, 32) uint8: shape and dtype are kept

# Every copy is one of the 9 * 9 windows of the padded image, mirrored or not: find which.
# A crop at (dy, dx) puts input pixel (i + dy, j + dx) at output pixel (i, j).
padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))  # (3, 40, 40)
windows = {
    (dy - 4, dx - 4, flip): padded[:, dy : dy + 32, dx : dx + 32][..., :: -1 if flip else 1]
    for dy in range(9)
    for dx in range(9)
    for flip in (False, True)
}
found = [[key for key, w in windows.items() if np.array_equal(w, c)] for c in copies]
assert all(found), "an augmented image that is no shifted, possibly mirrored, window"

fig, axes = plt.subplots(3, 3, figsize=(6.5, 7))
axes[0, 0].imshow(image.transpose(1, 2, 0))
axes[0, 0].set_title("original")
for ax, c, keys in zip(axes.flat[1:], copies, found, strict=True):
    dy, dx, flip = keys[0]
    ax.imshow(c.transpose(1, 2, 0))
    ax.set_title(f"crop at ({dy:+d}, {dx:+d}){', flipped' if flip else ''}", fontsize=10)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("One image, eight random crops and flips")
fig.tight_layout()
show(fig, "11_augmentation")

# %% [markdown]
# A third change is cutout (DeVries and Taylor, 2017): after the crop and the flip, a square of
# `cutout` x `cutout` pixels, centred on a random pixel and cut off where it crosses the border,
# is set to zero, so that the network cannot rely on any one small part of an image. Cutout is
# drawn after the crops and flips, so the same generator gives the same crops and flips as
# above, each with at most $8 \times 8$ of its pixels zeroed. The recipe leaves it off
# (`config.cutout == 0`; `skscratch train --cutout 8` turns it on): this network, trained for
# 44 epochs with it, reached no higher test accuracy than without it (README, "Result").

# %%
assert config.cutout == 0
side = 8
cut = augment(np.repeat(image[None], 8, axis=0), np.random.default_rng(0), cutout=side)
zeroed = np.any(cut != copies, axis=1)  # (8, 32, 32): pixels the square changed
assert np.all((cut == copies) | (cut == 0))  # every pixel kept or set to zero
print("pixels zeroed per copy:", zeroed.sum(axis=(1, 2)))
assert np.all(zeroed.sum(axis=(1, 2)) <= side**2)

# %% [markdown]
# Random flips show an image the same way round in two epochs running half of the time. The
# recorded run (README, "Result") alternates them instead (`skscratch train --flips
# alternate`; Jordan, arXiv:2404.00498, 2024): each image's flip is drawn at random in the first
# epoch, then reversed in every epoch after, so any two epochs running show every image both
# ways round. The crops stay random.

# %%
assert config.flips == "random"  # the default; the loop below draws its flips at random
first, second = (alternating_flips(len(x_train), config.seed, epoch) for epoch in (0, 1))
assert np.all(first != second)  # every image flipped in exactly one of two epochs running
print(f"flipped in epoch 1: {first.mean():.1%} of the images; in epoch 2, all the others")

# %% [markdown]
# ## Normalisation
#
# The network gets, per colour channel $c$,
#
# $$ \frac{x / 255 - \mu_c}{\sigma_c}, $$
#
# with $\mu_c$ and $\sigma_c$ the mean and standard deviation of the training images (in
# $[0, 1]$ units), so that its inputs are centred with unit spread. They come from the training
# images only: the test images must not influence training.

# %%
mean, std = channel_stats(x_train)
print("mean (R, G, B):", mean.round(4), " std:", std.round(4))  # (3,) each
x_norm = normalize(x_train, mean, std)
print(x_norm.shape, x_norm.dtype)  # (subset, 3, 32, 32) float32
np.testing.assert_allclose(x_norm.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
np.testing.assert_allclose(x_norm.std(axis=(0, 2, 3)), 1.0, atol=1e-3)
del x_norm

# %% [markdown]
# `iterate_batches` cuts a data set into shuffled (and optionally augmented) minibatches, one
# epoch per call; every image appears once:

# %%
sizes = [len(yb) for _, yb in iterate_batches(x_train, y_train, 256, rng=np.random.default_rng(0))]
print(sizes)  # full batches of 256, then the remainder
assert sum(sizes) == len(x_train)

# %% [markdown]
# ## The model
#
# `SKResNeXt` is a CIFAR-sized SK-ResNeXt: a 3x3 stem convolution, three stages of SK bottleneck
# blocks (1x1 conv, BN, ReLU, SK unit, 1x1 conv, BN, plus a shortcut, then ReLU; stages 2 and 3
# halve the image), global average pooling and a fully connected layer to 10 logits. Its shape
# is an `SKNetConfig`; `PRESETS` names a few. The backend is chosen here, where the model is
# built, and every layer of it runs on that backend.

# %%
model_config = PRESETS[preset]
model = SKResNeXt(model_config, seed=config.seed, backend="fast")
print(model_config, "on the", model.backend, "backend")
for name, p in model.named_parameters():
    print(f"{name:34s} {str(p.data.shape):16s} {p.data.size:7d}")
n_params = model.num_parameters()
assert n_params == sum(p.data.size for _, p in model.named_parameters())
print(f"{n_params:,} parameters, {count_macs(model) / 1e6:.2f} M multiply-adds per image")

# %% [markdown]
# Names follow a PyTorch module tree (`stages.1.0.sk.convs.1.weight` is the dilated convolution
# of the SK unit in the first block of stage 2). The README states that the default
# configuration has 673,834 parameters and 31.9 M multiply-adds per image; check it:

# %%
default = SKResNeXt(PRESETS["default"])
assert default.num_parameters() == 673_834
assert round(count_macs(default) / 1e6, 1) == 31.9

# %% [markdown]
# ## One network, two backends
#
# The backend decides how a model computes, not what it is: built with the same seed on the
# reference backend, the model has the very same parameters. On one batch, the two compute the
# same logits and loss, up to float32 rounding, and the same gradients, up to that rounding
# summed in a different order and amplified through a deep network's batch norms: well below 1%
# of the largest gradient. (Two fresh models, so that `model` starts training untouched.)

# %%
x_one, y_one = normalize(x_train[: config.batch_size], mean, std), y_train[: config.batch_size]
logits, losses, grads = {}, {}, {}
for backend in ("reference", "fast"):
    twin = SKResNeXt(model_config, seed=config.seed, backend=backend)
    for (name, p), (_, q) in zip(twin.named_parameters(), model.named_parameters(), strict=True):
        assert np.array_equal(p.data, q.data), name
    logits[backend] = twin.forward(x_one)  # (B, 10)
    losses[backend], dlogits = softmax_cross_entropy(logits[backend], y_one)
    twin.backward(dlogits, input_grad=False)
    grads[backend] = np.concatenate([p.grad.ravel() for _, p in twin.named_parameters()])
errors = {
    "logits": rel_error(logits["fast"], logits["reference"]),
    "loss": abs(losses["fast"] - losses["reference"]) / losses["reference"],
    "gradients": rel_error(grads["fast"], grads["reference"]),
}
print({name: f"{err:.1e}" for name, err in errors.items()})
assert errors["logits"] < 1e-5 and errors["loss"] < 1e-5 and errors["gradients"] < 1e-2

# %% [markdown]
# ## One training step
#
# A step is four lines: forward to the logits `(B, 10)`, the softmax cross-entropy loss and its
# gradient with respect to the logits, backward through the whole network (every parameter's
# `.grad` is set), and one SGD update.

# %%
print(inspect.getsource(train_step))

# %% [markdown]
# The optimiser is SGD with Nesterov momentum 0.9 and weight decay $5 \times 10^{-4}$ (not on
# batch-norm parameters and biases). The learning rate follows `learning_rate`: a linear
# warm-up over the first epoch, from $\eta_\text{peak} / T_w$ on the first step to the peak
# $\eta_\text{peak} = 0.2$ on the last, then a straight line down towards 0 (see the check
# below). For step $t = 0, \dots, T - 1$ of $T$, with $T_w$ warm-up steps:
#
# $$ \eta_t = \eta_\text{peak} \, \frac{t + 1}{T_w} \quad (t < T_w), \qquad
#    \eta_t = \eta_\text{peak} \Big( 1 - \frac{t - T_w}{T - T_w} \Big) \quad (t \ge T_w). $$
#
# The loss is the cross-entropy with label-smoothed targets
# $q = (1 - \varepsilon)\,\text{onehot}(y) + \varepsilon / K$, $\varepsilon = 0.2$, $K = 10$
# (`skscratch.losses`, tutorial 2). After every epoch the test images are classified as they
# are; after the last, also by the mean logits of each image and its mirror image (test-time
# flips), and then by the mean over those two views and each of them moved one pixel up-left and
# one down-right (test-time shifts: six views, `skscratch.evaluation`): the recipe of
# `python -m skscratch train`. Training showed the network every image flipped or not and
# moved by a few pixels, so each view is one it has learned to read, and their mean is steadier
# than any one of them.
#
# ## The training loop
#
# This is the loop of `skscratch.train.run_training`, without the checkpoints and progress bars;
# it is the same whichever backend the model runs on.
# Every random choice comes from a generator seeded with (seed, epoch) for the order of an epoch
# and (seed, epoch, batch) for the augmentation of a batch, so any step can be repeated on its
# own (that is what lets `run_training` resume a stopped run exactly). Batches are full:
# `len(x_train) // batch_size` per epoch, the few left-over images wait for the next shuffle.

# %%
assert (config.lr, config.label_smoothing) == (0.2, 0.2)
assert config.test_flips and config.test_shifts
assert config.augment and config.schedule == "onecycle"  # "onecycle": the straight-line fall
optimizer = SGD(
    model,
    lr=config.lr,
    momentum=config.momentum,
    nesterov=config.nesterov,
    weight_decay=config.weight_decay,
)
n_batches = len(x_train) // config.batch_size
total_steps = config.epochs * n_batches
warmup = round(config.warmup_epochs * n_batches)
before = evaluate(model, x_train, y_train, mean, std)  # the untrained model, for comparison

history, batch_losses, rates = [], [], []
started = time.perf_counter()
for epoch in range(config.epochs):
    order = np.random.default_rng([config.seed, 1, epoch]).permutation(len(x_train))
    loss_sum, correct = 0.0, 0
    for b in range(n_batches):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        xb = x_train[idx]
        if config.augment:
            batch_rng = np.random.default_rng([config.seed, 2, epoch, b])
            xb = augment(xb, batch_rng, cutout=config.cutout)
        step = epoch * n_batches + b
        optimizer.lr = learning_rate(
            step, total_steps, peak=config.lr, warmup_steps=warmup, kind=config.schedule
        )
        loss, n_correct = train_step(
            model, optimizer, normalize(xb, mean, std), y_train[idx],
            label_smoothing=config.label_smoothing,
        )  # fmt: skip
        loss_sum += loss * len(idx)
        correct += n_correct
        batch_losses.append(loss)
        rates.append(optimizer.lr)
    test = evaluate(model, x_test, y_test, mean, std)
    seen = n_batches * config.batch_size
    history.append(
        {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }
    )
    if epoch + 1 == config.epochs:  # the last epoch: also with flips, then shifts as well
        flipped = evaluate(model, x_test, y_test, mean, std, flips=True)
        shifted = evaluate(model, x_test, y_test, mean, std, flips=True, shifts=True)
        history[-1] |= {
            "test_accuracy_flips": flipped["accuracy"],
            "test_accuracy_shifts": shifted["accuracy"],
        }
    print(
        f"epoch {epoch + 1}: train loss {loss_sum / seen:.3f} acc {correct / seen:.3f} | "
        f"test loss {test['loss']:.3f} acc {test['accuracy']:.3f} | "
        f"{time.perf_counter() - started:.1f} s"
    )
print(
    f"last epoch, test accuracy with flips {flipped['accuracy']:.3f}, "
    f"with flips and shifts {shifted['accuracy']:.3f}"
)
after = evaluate(model, x_train, y_train, mean, std)

# %% [markdown]
# ## Did it learn?
#
# On the training images (without augmentation, the model in evaluation mode) the loss must have
# gone down from where the untrained model started, and the accuracy must be above chance
# (1 in 10). In the small run we check accuracy on the training images, which even a few dozen
# steps reliably lift; a longer run must beat chance on the test images too.

# %%
print(f"training loss {before['loss']:.3f} -> {after['loss']:.3f}")
print(f"training accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
print(f"test accuracy {test['accuracy']:.3f}")
assert after["loss"] < before["loss"]
assert after["accuracy"] > 0.1
if not SMALL:
    assert test["accuracy"] > 0.1

# %% [markdown]
# The learning rate followed the schedule: it reached its peak of 0.2 at the last warm-up step,
# kept it for one more step (the fall starts from the peak), then fell by
# `0.2 / (total_steps - warmup)` per step, to that amount at the last step (the
# next step, which never comes, would have a learning rate of 0; a one-epoch run is all warm-up
# and ends at the peak). In the loss panel below, the grey line is the loss of every batch; the
# epoch means are drawn at the end of their epoch.

# %%
assert np.isclose(max(rates), config.lr) and int(np.argmax(rates)) == warmup - 1
assert np.isclose(rates[0], config.lr / warmup)  # the warm-up's first step is not at 0
if total_steps > warmup:
    assert np.isclose(rates[warmup], config.lr)  # the peak, a second time
if total_steps > warmup:
    assert np.isclose(rates[-1], config.lr / (total_steps - warmup))

epochs = [h["epoch"] for h in history]
steps = (np.arange(total_steps) + 1) / n_batches  # in epochs
fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
ax_loss.plot(steps, batch_losses, color="0.75", lw=1, label="train, per batch")
ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train, epoch mean")
ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (augmented)")
ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
ax_acc.axhline(0.1, color="k", ls="--", lw=0.8, label="chance")
ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
ax_lr.plot(steps, rates)
ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Schedule: warm-up, linear decay")
for ax in (ax_loss, ax_acc, ax_lr):
    ax.grid(alpha=0.3)
    ax.set_xticks(range(0, config.epochs + 1))
for ax in (ax_loss, ax_acc):
    ax.legend()
fig.suptitle(f"SK-ResNeXt '{preset}' on {len(x_train)} CIFAR-10 images")
fig.tight_layout()
show(fig, "11_training_curves")

# %% [markdown]
# ## Accuracy per class
#
# `evaluate` also returns the accuracy of every class, the fraction of its test images predicted
# correctly. Weighted by how many test images each class has, they average to the overall
# accuracy (on the full test set every class has 1000 images, and the plain mean is the overall
# accuracy).

# %%
per_class = np.array(test["per_class_accuracy"])  # (10,)
counts = np.bincount(y_test, minlength=10)  # test images per class
print("test images per class:", counts)
assert np.isclose(np.sum(counts * per_class) / counts.sum(), test["accuracy"])
if np.all(counts == counts[0]):
    assert np.isclose(per_class.mean(), test["accuracy"])

fig, ax = plt.subplots(figsize=(9, 4))
ax.bar(data.label_names, per_class, color="tab:blue")
ax.axhline(test["accuracy"], color="tab:red", label=f"overall {test['accuracy']:.3f}")
ax.axhline(0.1, color="k", ls="--", lw=0.8, label="chance")
ax.set(
    ylabel="test accuracy", ylim=(0, 1), title=f"Accuracy per class on {len(y_test)} test images"
)
ax.tick_params(axis="x", rotation=30)
ax.legend()
fig.tight_layout()
show(fig, "11_per_class_accuracy")

# %% [markdown]
# ## A trained model on the other backend
#
# The trained parameters are not tied to the backend they were trained on: `set_backend`
# switches every layer of a built model, and on the reference backend the trained model
# classifies the test images as it does on the fast one (a prediction could only differ where two
# logits are within rounding of each other).

# %%
x_check, y_check = x_test[:1000], y_test[:1000]
on_fast = evaluate(model, x_check, y_check, mean, std)
on_reference = evaluate(model.set_backend("reference"), x_check, y_check, mean, std)
model.set_backend("fast")
print(f"{len(y_check)} test images: accuracy {on_fast['accuracy']:.3f} on fast, ", end="")
print(f"{on_reference['accuracy']:.3f} on reference")
assert abs(on_fast["accuracy"] - on_reference["accuracy"]) <= 2 / len(y_check)
np.testing.assert_allclose(on_fast["loss"], on_reference["loss"], rtol=1e-4)

# %% [markdown]
# ## The same loop, with checkpoints
#
# `python -m skscratch train` runs this loop through `run_training`, adding progress bars, a
# checkpoint after every epoch (and on Ctrl-C) that `--resume` continues exactly, `metrics.jsonl`
# and a plot of the curves. The run of this tutorial is:

# %%
command = f"python -m skscratch train --backend {model.backend} --model {preset} "
command += f"--epochs {config.epochs} --batch-size {config.batch_size} --subset {config.subset}"
if config.test_subset is not None:
    command += f" --test-subset {config.test_subset}"
print(command + " --out runs/tutorial")

# %% [markdown]
# `--backend fast` is the default. With `--backend reference` the same command trains on the
# plain-NumPy pairs instead: in the course, on your own functions, end to end. Every
# convolution, batch norm, ReLU and SK unit of the network is then yours (the fast backend
# shares only the pooling, the linear layers, the branch softmax and the loss with it). Plain
# NumPy is not compiled for speed, so start with the tiny model:
#
#     python -m skscratch train --backend reference --model tiny --subset 1000 --epochs 2

# %% [markdown]
# Because our loop draws its randomness the same way, `run_training` with the same settings
# repeats it number for number. We check that in the small run (in a longer one it would double
# the time).

# %%
if SMALL:
    with tempfile.TemporaryDirectory() as out:
        packaged = run_training(
            data,
            out,
            model_config=model_config,
            config=config,
            progress=False,
            backend=model.backend,
        )
        written = sorted(os.listdir(out))
        print(written)
        assert {"checkpoint.npz", "metrics.jsonl", "curves.png"} <= set(written)
    assert set(history[-1]) <= set(packaged[-1])  # the flipped evaluation included
    for ours, theirs in zip(history, packaged, strict=True):
        for key in ours.keys() - {"epoch"}:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5)
    print("run_training repeats the loop above")

# %% [markdown]
# ## Two processes, one step
#
# The loss of a step is a mean over the batch, and the gradient of a mean is the mean of the
# gradients. Split the batch of $B$ images into shares of $n_1, \dots, n_W$ images; then
#
# $$ \nabla \frac{1}{B} \sum_{i=1}^{B} \ell_i
#    = \sum_{w=1}^{W} \frac{n_w}{B} \, \nabla \frac{1}{n_w} \sum_{i \in w} \ell_i , $$
#
# so $W$ processes can each compute the gradient of their own share, and the weighted mean of
# their gradients is the step's. On the fully connected layer and the loss:

# %%
rng = np.random.default_rng(0)
features, labels = rng.standard_normal((12, 16)), rng.integers(0, 10, 12)
w_fc = rng.standard_normal((10, 16)) * 0.1


def fc_weight_gradient(f, y):
    logits, fc_cache = linear_forward(f, w_fc)
    _, dlogits = softmax_cross_entropy(logits, y)
    return linear_backward(dlogits, fc_cache)[1]


whole = fc_weight_gradient(features, labels)
shares = [slice(0, 5), slice(5, 12)]  # the shares need not be equal
shared = sum((s.stop - s.start) / 12 * fc_weight_gradient(features[s], labels[s]) for s in shares)
print(f"relative error between the two: {rel_error(shared, whole):.1e}")
assert rel_error(shared, whole) < 1e-12

# %% [markdown]
# Batch norm is the exception: it normalises each image with the mean and variance of the images
# it is given, so a share normalises with its own statistics ("ghost batch norm"), and the
# shared step is close to, not equal to, the step of one process. `python -m skscratch train
# --workers 2` trains this way (`skscratch.parallel`): on two cores, two processes of one thread
# each train more images per second than one process of two threads (README, "Speed").
#
# ## Summary
#
# - CIFAR-10: 50000 training and 10000 test images of 32x32 pixels, 5000 and 1000 per class.
#   Augmentation crops a shifted window of the zero-padded image and mirrors it with
#   probability 1/2 (cutout, an option, also zeroes a square); normalisation uses the training
#   images' channel statistics, after which they have mean 0 and standard deviation 1.
# - The default SK-ResNeXt has 673,834 parameters and 31.9 M multiply-adds per image. Built
#   with the same seed, the reference and fast backends hold the same parameters and compute
#   the same logits and loss (to $10^{-5}$) and gradients (to $10^{-2}$ of the largest).
# - A step is forward, label-smoothed loss, backward, SGD update. The schedule starts at
#   $\eta_\text{peak} / T_w$, reaches the peak 0.2 at step $T_w - 1$, holds it one more step,
#   and falls to $\eta_\text{peak} / (T - T_w)$ at the last step.
# - After training, the loss on the training images is lower than before and the accuracy is
#   above chance (0.1); the per-class accuracies, weighted by the class sizes, average to the
#   overall accuracy; on the other backend the trained model's accuracy differs by at most 2
#   in 1000 test images.
# - Every random choice is seeded by (seed, epoch, batch), so `run_training` repeats the loop
#   number for number (to $10^{-5}$).
# - The gradient of the batch's mean loss is the size-weighted mean of its shares' gradients
#   (to $10^{-12}$ on the FC layer), which lets several processes share a step; batch norm
#   makes each share normalise on its own.
#
# ## Exercises
#
# 1. On the full training set of 50000 images with batches of 128, how many steps does an
#    epoch have, and how many images wait for the next shuffle?

# %%
# BEGIN SOLUTION
steps_per_epoch, left_over = 50000 // 128, 50000 % 128  # 390 and 80
# END SOLUTION
full = [
    len(yb)
    for _, yb in iterate_batches(
        np.zeros((50000, 1)), np.zeros(50000), 128, rng=np.random.default_rng(0), drop_last=True
    )
]
assert len(full) == steps_per_epoch and 50000 - sum(full) == left_over

# %% [markdown]
# 2. The recorded run trains 50 epochs of 390 steps, with one epoch of warm-up and a peak of
#    0.2. What is the learning rate of its first step, and at which step (counted from 0) has
#    it fallen to half the peak?

# %%
# BEGIN SOLUTION
first_rate = 0.2 / 390
half_step = 390 + (50 * 390 - 390) // 2  # halfway along the fall of T - T_w steps
# END SOLUTION
schedule = dict(peak=0.2, warmup_steps=390, kind="onecycle")
assert math.isclose(learning_rate(0, 50 * 390, **schedule), first_rate)
assert math.isclose(learning_rate(half_step, 50 * 390, **schedule), 0.1)

# %% [markdown]
# 3. With label smoothing $\varepsilon = 0.2$ and $K = 10$ classes, the training loss cannot
#    fall below the entropy of the target $q$: it is smallest where the softmax equals $q$.
#    What is that smallest loss?

# %%
# BEGIN SOLUTION
min_smoothed_loss = -(0.82 * math.log(0.82) + 9 * 0.02 * math.log(0.02))
# END SOLUTION
q = np.full(10, 0.02)
q[0] = 0.82
loss_at_q, grad_at_q = softmax_cross_entropy(np.log(q)[None], np.array([0]), smoothing=0.2)
assert np.abs(grad_at_q).max() < 1e-12  # the minimum: the gradient (softmax - q) / N is 0
assert math.isclose(loss_at_q, min_smoothed_loss, rel_tol=1e-9)

# %% [markdown]
# 4. How many parameters does the fully connected layer at the end of the default model have
#    (its last stage puts out 512 channels)?

# %%
# BEGIN SOLUTION
fc_params = 512 * 10 + 10  # weight (10, 512) and bias (10,)
# END SOLUTION
assert fc_params == sum(p.data.size for n, p in default.named_parameters() if n.startswith("fc."))
