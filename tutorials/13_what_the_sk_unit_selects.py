# %% [markdown]
# # 13. What does the SK unit select?
#
# Li et al. ask whether an SK unit adapts its receptive field to the size of the object, as
# neurons in the visual cortex adapt theirs to the stimulus (Section 4.5, "Analysis and
# Interpretation"). Their experiment: enlarge the central object of every validation image
# 1.5x and 2.0x, and watch the attention each unit gives its branches. On ImageNet they found
# that in the early and middle stages, most channels move weight to the larger kernel as the
# object grows, and that in the last stage the preference disappears.
#
# This tutorial repeats the experiment on CIFAR-10 with a network trained by
# `python -m skscratch train`. For a network with M = 2 branches, for every SK unit and
# channel c, averaged over the test images:
#
#     diff[c] = a_dilated[c] - a_plain[c]
#
# where a_plain is the attention on the 3x3 branch with dilation 1 and a_dilated the one on the
# 3x3 branch with dilation 2 (a 5x5 field). Since a_plain + a_dilated = 1, diff ranges over
# [-1, 1] and diff > 0 means the unit prefers the larger field.

# %%
import inspect
import os
import tempfile
from pathlib import Path

import numpy as np

import skscratch
from skscratch.analysis import (
    across_seeds,
    attention_by_scale,
    class_mean_attention,
    enlarge_center,
    mean_attention,
    plot_binned_channels,
    plot_per_class,
    plot_results,
)
from skscratch.data import load_cifar10
from skscratch.models import PRESETS
from skscratch.plots import pyplot, show
from skscratch.runs import load_model
from skscratch.train import TrainConfig, run_training

SMALL = os.environ.get("SKSCRATCH_TUTORIAL_SMALL") == "1"

# %% [markdown]
# ## A trained network
#
# The experiment needs a network that has learnt something. It reads the checkpoint named by
# `$SKSCRATCH_CHECKPOINT`, else `runs/sknet/checkpoint.npz` (where `python -m skscratch train`
# writes by default), else the network the README records, committed as
# `docs/training/checkpoint.npz` beside the package in a source checkout. Without any of them,
# it trains the tiny preset for a moment, enough to run the code, not enough to learn anything
# to interpret.

# %%
data = load_cifar10()
recorded = Path(skscratch.__file__).resolve().parents[1] / "docs" / "training" / "checkpoint.npz"
candidates = [os.environ.get("SKSCRATCH_CHECKPOINT"), "runs/sknet/checkpoint.npz", recorded]
checkpoint = next((Path(c) for c in candidates if c and Path(c).exists()), Path("none"))
if not checkpoint.exists():
    print(f"no checkpoint at {checkpoint}: training the tiny preset briefly")
    out = Path(tempfile.mkdtemp()) / "tiny"
    run_training(
        data,
        out,
        model_config=PRESETS["tiny"],
        config=TrainConfig(epochs=1, batch_size=64, subset=512, test_subset=100),
        progress=False,
    )
    checkpoint = out / "checkpoint.npz"
model, mean, std = load_model(checkpoint)
units = model.sk_units()
print(f"{checkpoint}: {model.num_parameters():,} parameters, {len(units)} SK units:")
for name, unit in units:
    print(f"  {name}: {unit.params['convs.0.weight'].data.shape[0]} channels")

# %% [markdown]
# ## Enlarging the object
#
# CIFAR-10 objects fill most of the frame, centred. To enlarge one by a factor s, cut the
# central 32/s x 32/s window and resize it back to 32 x 32 (bilinear interpolation,
# `scipy.ndimage.zoom`): 1.5x keeps the central 21 x 21 pixels, 2.0x the central 16 x 16.

# %%
print(inspect.getsource(enlarge_center))
images = data.x_test[: 8 if SMALL else 10_000]
factors = (1.0, 1.5, 2.0)
enlarged = {f: enlarge_center(images, f) for f in factors}
for f, x in enlarged.items():
    print(f"{f}x: {x.shape} {x.dtype}")  # (N, 3, 32, 32) uint8 each
    assert x.shape == images.shape and x.dtype == np.uint8
np.testing.assert_array_equal(enlarged[1.0], images)  # 1.0x leaves the images alone

plt = pyplot()
fig, axes = plt.subplots(3, 4, figsize=(7, 5.5))
for row, f in zip(axes, factors, strict=True):
    for ax, image in zip(row, enlarged[f][:4], strict=True):
        ax.imshow(image.transpose(1, 2, 0))  # (3, 32, 32) -> (32, 32, 3) for imshow
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(f"{f:g}x")
fig.suptitle("Test images with the central object enlarged")
show(fig, "13_enlarged_images")

# %% [markdown]
# ## The attention of every unit
#
# `class_mean_attention` runs the network in evaluation mode and averages each unit's attention
# a (N, M, C) over the images of each class, giving one (K, M, C) array per unit;
# `mean_attention` is its average over all the images, one (M, C) array per unit. The softmax
# makes the branches of a channel sum to 1, and so does their mean.

# %%
print(inspect.getsource(class_mean_attention))
att = mean_attention(model, images, mean, std)
for name, a in att.items():
    print(f"{name}: mean attention {a.shape}")  # (M, C)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-6)

# %% [markdown]
# ## The experiment
#
# `attention_by_scale` does the above for each factor and takes the difference, dilated minus
# plain, per channel, and with the labels its mean over channels per class. `plot_results` draws
# the per-channel curves and the mean over channels of each unit; `plot_per_class` the mean per
# class for the last unit of each stage (the paper's Figure 4), and `plot_binned_channels` the
# attention on the dilated branch in groups of channels (its Figure 3). Those two take the
# summary `across_seeds` makes of one or more networks: here, one.

# %%
labels = data.y_test[: len(images)]
result = attention_by_scale(model, images, mean, std, labels=labels, factors=factors)
for name, fig in plot_results(result).items():
    show(fig, "13_" + name)
summary = across_seeds([result])
show(plot_per_class(summary, list(data.label_names)), "13_attention_per_class")
show(plot_binned_channels(summary), "13_attention_per_channel_group")

print(f"mean attention difference (dilated - plain) over {result['n_images']} test images")
print(f"{'SK unit':<16}" + "".join(f"{f:>9g}x" for f in factors) + "   change 1.0x -> 2.0x")
for name, unit in result["units"].items():
    d = unit["mean_difference"]
    assert len(d) == len(factors) and all(-1 <= v <= 1 for v in d)
    print(f"{name:<16}" + "".join(f"{v:>+10.4f}" for v in d) + f"   {d[-1] - d[0]:+.4f}")

# %% [markdown]
# ## Reading the numbers
#
# For each unit, the change from 1.0x to 2.0x says where its attention moved as the object
# grew: positive towards the dilated (larger) field, negative towards the plain 3x3. The
# paper's finding predicts positive changes in the early stages and little change in the last.
# Here is what this network does, channel by channel:

# %%
for name, unit in result["units"].items():
    diff = np.array(unit["channel_difference"])  # (F, C)
    towards_large = np.mean(diff[-1] > diff[0])
    print(
        f"{name}: {towards_large:.0%} of channels give the dilated branch more weight at 2.0x "
        f"than at 1.0x (mean change {np.mean(diff[-1] - diff[0]):+.4f})"
    )

# %% [markdown]
# The default network trained as the README records gives the figures and numbers in
# `docs/analysis/` (`python -m skscratch analyze runs/sknet/checkpoint.npz --out docs/analysis`),
# and `docs/analysis/README.md` says what they show. A network this small, trained on 32 x 32
# images, is a long way from the paper's SKNet-50 on ImageNet: whichever way the numbers go,
# they describe this network, not SK units in general.
