"""What does the SK unit select? The experiment of the paper's Section 4.5 on CIFAR-10.

Li et al. enlarge the central object of every validation image (centre crop, resize back to the
input size) by 1.5x and 2.0x, and record, for every SK unit, the attention of each branch per
channel, averaged over the images. Their finding on ImageNet: in the early and middle stages, as
the object grows, the attention moves towards the larger kernel (here: the dilated branch); in
the last stage the preference disappears.

Here, for a trained network and every SK unit:

    diff[unit, factor, c] = mean over images of (a_dilated[c] - a_plain[c])

with a_plain = the branch with dilation 1 and a_dilated = the branch with dilation 2 (M = 2; with
M > 2, the branch with the largest dilation), and its mean over channels per unit and factor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from skscratch.data import normalize
from skscratch.models import SKResNeXt

FACTORS = (1.0, 1.5, 2.0)


def enlarge_center(images: NDArray, factor: float) -> NDArray:
    """Enlarge the centre of uint8 images (N, C, H, W) by `factor`: cut the central
    round(H / factor) x round(W / factor) window and resize it back to H x W (bilinear,
    scipy.ndimage.zoom). factor 1 returns a copy."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    n, c, h, w = images.shape
    ch, cw = round(h / factor), round(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[:, :, top : top + ch, left : left + cw].astype(np.float32)
    zoomed = ndimage.zoom(crop, (1, 1, h / ch, w / cw), order=1, grid_mode=True, mode="nearest")
    return np.clip(np.rint(zoomed), 0, 255).astype(np.uint8)


def mean_attention(
    model: SKResNeXt, images: NDArray, mean: NDArray, std: NDArray, *, batch_size: int = 250
) -> dict[str, NDArray]:
    """Attention of every SK unit, averaged over `images` (uint8 (N, 3, 32, 32)), in evaluation
    mode. Returns {unit name: (M, C) array}."""
    model.eval()
    sums: dict[str, NDArray] = {}
    for start in range(0, len(images), batch_size):
        model.forward(normalize(images[start : start + batch_size], mean, std))
        for name, unit in model.sk_units():
            batch_sum = unit.attention.sum(axis=0, dtype=np.float64)  # (M, C)
            sums[name] = sums.get(name, 0) + batch_sum
    return {name: s / len(images) for name, s in sums.items()}


def attention_by_scale(
    model: SKResNeXt,
    images: NDArray,
    mean: NDArray,
    std: NDArray,
    *,
    factors: tuple[float, ...] = FACTORS,
    batch_size: int = 250,
) -> dict:
    """The experiment: per unit, the per-channel attention difference (dilated minus plain) for
    each enlargement factor, and its mean over channels.

    Returns {"factors": [...], "units": {name: {"channel_difference": (F, C) list,
    "mean_difference": (F,) list, "mean_attention": (F, M, C) list}}}.
    """
    per_factor = [
        mean_attention(model, enlarge_center(images, f), mean, std, batch_size=batch_size)
        for f in factors
    ]
    units = {}
    for name in per_factor[0]:
        att = np.stack([p[name] for p in per_factor])  # (F, M, C)
        diff = att[:, -1, :] - att[:, 0, :]  # (F, C): largest dilation minus dilation 1
        units[name] = {
            "channel_difference": diff.tolist(),
            "mean_difference": diff.mean(axis=1).tolist(),
            "mean_attention": att.tolist(),
        }
    return {"factors": list(factors), "n_images": int(len(images)), "units": units}


def plot_results(result: dict) -> dict:
    """The two figures of the experiment: {"attention_per_channel": fig,
    "attention_per_unit": fig} (matplotlib figures)."""
    from skscratch.plots import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    factors, units = result["factors"], result["units"]
    names = list(units)

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        diff = np.array(units[name]["channel_difference"])  # (F, C)
        for f, row in zip(factors, diff, strict=True):
            ax.plot(np.arange(len(row)), row, lw=1, label=f"{f:g}x")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set(title=name, xlabel="channel", ylabel="attention: dilated - plain")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title="object size", fontsize=8)
    fig.suptitle("Attention difference per channel, averaged over the test images")
    fig.tight_layout()
    per_channel = fig

    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 3.6))
    width = 0.8 / len(factors)
    for k, f in enumerate(factors):
        values = [units[n]["mean_difference"][k] for n in names]
        ax.bar(
            np.arange(len(names)) + (k - (len(factors) - 1) / 2) * width,
            values,
            width,
            label=f"{f:g}x",
        )
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="mean attention: dilated - plain", title="Mean over channels, per SK unit")
    ax.legend(title="object size")
    fig.tight_layout()
    return {"attention_per_channel": per_channel, "attention_per_unit": fig}


def write_results(result: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attention_by_scale.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
