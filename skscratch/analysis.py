"""What does the SK unit select? The experiment of the paper's Section 4.5 on CIFAR-10.

Li et al. enlarge the central object of every validation image (centre crop, resize back to the
input size) by 1.5x and 2.0x, and record, for every SK unit, the attention of each branch per
channel, averaged over the images. Their finding on ImageNet: in the early and middle stages, as
the object grows, the attention moves towards the larger kernel (here: the dilated branch); in
the last stage the preference disappears.

Here, for a trained network and every SK unit:

    diff[unit, factor, c] = mean over images of (a_dilated[c] - a_plain[c])

with a_plain = the branch with dilation 1 and a_dilated = the branch with dilation 2 (M = 2; with
M > 2, the branch with the largest dilation), and its mean over channels per unit and factor;
with the images' labels, that mean per class too (the paper's Figure 4), and the attention on
the dilated branch in groups of channels (its Figure 3).

One network's numbers mix what the SK unit does with where its training happened to end: two
networks trained alike from different seeds can move their attention in opposite directions.
across_seeds puts several networks' results side by side, and calls a change from 1.0x to 2.0x
a trend only where it is larger than the spread between the networks.
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


def class_mean_attention(
    model: SKResNeXt,
    images: NDArray,
    labels: NDArray,
    mean: NDArray,
    std: NDArray,
    *,
    num_classes: int = 10,
    batch_size: int = 250,
) -> tuple[dict[str, NDArray], NDArray]:
    """Attention of every SK unit, averaged over the images of each class, in evaluation mode.

    images: uint8 (N, 3, 32, 32); labels: (N,) in [0, num_classes). Returns ({unit name:
    (K, M, C) array}, counts (K,)): row k is the mean over the images of class k (NaN for a class
    without images)."""
    model.eval()
    labels = np.asarray(labels)
    onehot = np.eye(num_classes)[labels]  # (N, K): sums per class as one matrix product
    sums: dict[str, NDArray] = {}
    for start in range(0, len(images), batch_size):
        model.forward(normalize(images[start : start + batch_size], mean, std))
        rows = onehot[start : start + batch_size]
        for name, unit in model.sk_units():
            batch_sum = np.einsum("nk,nmc->kmc", rows, unit.attention.astype(np.float64))
            sums[name] = sums.get(name, 0) + batch_sum
    counts = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: s / counts[:, None, None] for name, s in sums.items()}, counts


def mean_attention(
    model: SKResNeXt, images: NDArray, mean: NDArray, std: NDArray, *, batch_size: int = 250
) -> dict[str, NDArray]:
    """Attention of every SK unit, averaged over `images` (uint8 (N, 3, 32, 32)), in evaluation
    mode. Returns {unit name: (M, C) array}."""
    one_class = np.zeros(len(images), dtype=np.int64)
    per_class, _ = class_mean_attention(
        model, images, one_class, mean, std, num_classes=1, batch_size=batch_size
    )
    return {name: a[0] for name, a in per_class.items()}


def attention_by_scale(
    model: SKResNeXt,
    images: NDArray,
    mean: NDArray,
    std: NDArray,
    *,
    labels: NDArray | None = None,
    num_classes: int = 10,
    factors: tuple[float, ...] = FACTORS,
    batch_size: int = 250,
) -> dict:
    """The experiment: per unit, the per-channel attention difference (dilated minus plain) for
    each enlargement factor, and its mean over channels; with labels, that mean per class too.

    Returns {"factors": [...], "n_images": N, "units": {name: {"channel_difference": (F, C)
    list, "mean_difference": (F,) list, "mean_attention": (F, M, C) list, and with labels
    "class_difference": (F, K) list}}}.
    """
    classes = np.zeros(len(images), dtype=np.int64) if labels is None else np.asarray(labels)
    k = 1 if labels is None else num_classes
    per_factor = []
    for f in factors:
        per_class, counts = class_mean_attention(
            model, enlarge_center(images, f), classes, mean, std, num_classes=k,
            batch_size=batch_size,
        )  # fmt: skip
        per_factor.append(per_class)
    units = {}
    for name in per_factor[0]:
        by_class = np.stack([p[name] for p in per_factor])  # (F, K, M, C)
        present = counts > 0
        # The mean over all images: the class means weighted by their images.
        att = np.einsum("fkmc,k->fmc", by_class[:, present], counts[present]) / counts.sum()
        diff = att[:, -1, :] - att[:, 0, :]  # (F, C): largest dilation minus dilation 1
        units[name] = {
            "channel_difference": diff.tolist(),
            "mean_difference": diff.mean(axis=1).tolist(),
            "mean_attention": att.tolist(),
        }
        if labels is not None:
            class_diff = (by_class[:, :, -1, :] - by_class[:, :, 0, :]).mean(axis=2)  # (F, K)
            units[name]["class_difference"] = class_diff.tolist()
    return {"factors": list(factors), "n_images": int(len(images)), "units": units}


def last_units_of_stages(names: list[str]) -> list[str]:
    """The last SK unit of each stage ("stages.<i>.<block>.sk"), in order: the units the paper's
    Figure 4 shows (SK_2_3, SK_3_4, ... in SKNet-50)."""
    last: dict[str, str] = {}
    for name in names:
        last[name.split(".")[1]] = name  # later blocks of a stage overwrite earlier ones
    return list(last.values())


def binned(values: NDArray, bins: int) -> NDArray:
    """The mean over consecutive groups of channels: values (..., C) -> (..., bins), C a
    multiple of bins (the paper's Figure 3 shows a point for every 16 channels)."""
    c = values.shape[-1]
    if c % bins:
        raise ValueError(f"{c} channels do not split into {bins} equal groups")
    return values.reshape(*values.shape[:-1], bins, c // bins).mean(axis=-1)


def across_seeds(results: list[dict], *, bins: int = 16) -> dict:
    """What several networks (trained alike from different seeds) agree on.

    For each unit, over the results of attention_by_scale (one per network): the mean and the
    standard deviation across networks (ddof=1; 0 for a single network) of the mean difference
    per factor, of its change from the first factor to the last (the trend), of the per-class
    differences (if every result has them), and of the attention on the dilated branch in
    `bins` groups of channels (every channel its own group in a unit with fewer). A trend is
    called one only where its mean across networks is larger than their standard deviation and
    every network moves the same way.
    """
    factors = results[0]["factors"]
    if any(r["factors"] != factors or r["units"].keys() != results[0]["units"].keys()
           for r in results):  # fmt: skip
        raise ValueError("the results must come from networks of one shape, at the same factors")

    def spread(arrays: list) -> dict:
        a = np.array(arrays, dtype=np.float64)
        sd = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])
        return {"mean": a.mean(axis=0).tolist(), "std": sd.tolist()}

    units = {}
    for name in results[0]["units"]:
        per_seed = [r["units"][name] for r in results]
        diffs = [u["mean_difference"] for u in per_seed]
        trends = [d[-1] - d[0] for d in diffs]
        trend = spread(trends)
        same_sign = all(t > 0 for t in trends) or all(t < 0 for t in trends)
        units[name] = {
            "mean_difference": spread(diffs),
            "trend": trend
            | {
                "per_seed": trends,
                "is_a_trend": len(trends) > 1 and same_sign and abs(trend["mean"]) > trend["std"],
            },
            "binned_dilated_attention": spread(
                [
                    binned(dilated, min(bins, dilated.shape[-1]))
                    for dilated in (np.array(u["mean_attention"])[:, -1, :] for u in per_seed)
                ]
            ),  # fmt: skip
        }
        if all("class_difference" in u for u in per_seed):
            units[name]["class_difference"] = spread([u["class_difference"] for u in per_seed])
    return {"factors": factors, "seeds": len(results), "bins": bins, "units": units}


def plot_results(result: dict) -> dict:
    """The figures of one network's experiment: {"attention_per_channel": fig,
    "attention_per_unit": fig} (matplotlib figures)."""
    return {
        "attention_per_channel": _plot_per_channel(result),
        "attention_per_unit": plot_per_unit(across_seeds([result])),
    }


def _plot_per_channel(result: dict):
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
    return fig


def _seeds_note(summary: dict) -> str:
    n = summary["seeds"]
    return f"mean of {n} networks; bars: one standard deviation across them" if n > 1 else ""


def plot_per_unit(summary: dict):
    """Mean over channels of (dilated - plain) per unit and factor, with the seeds' spread."""
    from skscratch.plots import pyplot

    plt = pyplot()
    factors, units = summary["factors"], summary["units"]
    names = list(units)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 3.8))
    width = 0.8 / len(factors)
    for k, f in enumerate(factors):
        ax.bar(
            np.arange(len(names)) + (k - (len(factors) - 1) / 2) * width,
            [units[n]["mean_difference"]["mean"][k] for n in names],
            width,
            yerr=[units[n]["mean_difference"]["std"][k] for n in names],
            capsize=2,
            label=f"{f:g}x",
        )
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="mean attention: dilated - plain", title="Mean over channels, per SK unit")
    ax.legend(title="object size")
    fig.text(0.01, 0.01, _seeds_note(summary), fontsize=7)
    fig.tight_layout()
    return fig


def plot_per_class(summary: dict, class_names: list[str]):
    """The paper's Figure 4: for the last unit of each stage, the mean over channels of
    (dilated - plain) per class, at each factor, with the seeds' spread."""
    from skscratch.plots import pyplot

    plt = pyplot()
    factors = summary["factors"]
    names = last_units_of_stages(list(summary["units"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    x = np.arange(len(class_names))
    for ax, name in zip(axes[0], names, strict=True):
        values = summary["units"][name]["class_difference"]
        for k, f in enumerate(factors):
            ax.errorbar(
                x, values["mean"][k], yerr=values["std"][k], marker="o", ms=3, lw=1, capsize=2,
                label=f"{f:g}x",
            )  # fmt: skip
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xticks(x, class_names, rotation=45, ha="right", fontsize=8)
        ax.set(title=name, ylabel="mean attention: dilated - plain")
        ax.legend(title="object size", fontsize=8)
    fig.suptitle("Per class, the last SK unit of each stage (the paper's Figure 4)")
    fig.text(0.01, 0.01, _seeds_note(summary), fontsize=7)
    fig.tight_layout()
    return fig


def plot_binned_channels(summary: dict):
    """The paper's Figure 3: for the last unit of each stage, the attention on the dilated
    branch in groups of channels, at each factor, with the seeds' spread as a band."""
    from skscratch.plots import pyplot

    plt = pyplot()
    factors = summary["factors"]
    names = last_units_of_stages(list(summary["units"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = summary["units"][name]["binned_dilated_attention"]
        bins = len(values["mean"][0])
        for k, f in enumerate(factors):
            mean, sd = np.array(values["mean"][k]), np.array(values["std"][k])
            (line,) = ax.plot(np.arange(1, bins + 1), mean, marker="o", ms=3, lw=1, label=f"{f:g}x")
            ax.fill_between(np.arange(1, bins + 1), mean - sd, mean + sd, alpha=0.2,
                            color=line.get_color())  # fmt: skip
        ax.axhline(0.5, color="gray", lw=0.5)
        ax.set(title=name, xlabel=f"channel group ({bins} groups)", ylabel="attention on dilated")
        ax.legend(title="object size", fontsize=8)
    fig.suptitle("Attention on the dilated branch per group of channels (the paper's Figure 3)")
    fig.text(0.01, 0.01, _seeds_note(summary), fontsize=7)
    fig.tight_layout()
    return fig


def write_results(result: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attention_by_scale.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
