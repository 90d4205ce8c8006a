"""The attention-by-object-size experiment (skscratch.analysis, `skscratch analyze`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_data import write_fake_cifar

from skscratch.analysis import (
    across_seeds,
    attention_by_scale,
    binned,
    class_mean_attention,
    enlarge_center,
    last_units_of_stages,
    mean_attention,
)
from skscratch.data import load_cifar10
from skscratch.models import PRESETS, SKResNeXt
from skscratch.train import TrainConfig, run_training


def test_enlarge_center_keeps_shape_dtype_and_factor_one_is_identity():
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    for factor in (1.0, 1.5, 2.0):
        y = enlarge_center(x, factor)
        assert y.shape == x.shape and y.dtype == np.uint8
    np.testing.assert_array_equal(enlarge_center(x, 1.0), x)
    with pytest.raises(ValueError, match="factor"):
        enlarge_center(x, 0.5)


def test_enlarge_center_doubles_a_centred_square():
    # A bright 8x8 square in the centre becomes a 16x16 square at 2x (up to one blurred edge).
    x = np.zeros((1, 1, 32, 32), dtype=np.uint8)
    x[..., 12:20, 12:20] = 200
    y = enlarge_center(x, 2.0)[0, 0]
    bright = y > 100
    rows, cols = np.nonzero(bright)
    assert 15 <= rows.max() - rows.min() + 1 <= 17
    assert 15 <= cols.max() - cols.min() + 1 <= 17
    assert abs(rows.mean() - 15.5) < 1 and abs(cols.mean() - 15.5) < 1
    # Constant images stay constant.
    flat = np.full((1, 3, 32, 32), 77, dtype=np.uint8)
    np.testing.assert_array_equal(enlarge_center(flat, 1.5), flat)


def test_attention_by_scale_shapes_and_consistency():
    model = SKResNeXt(PRESETS["tiny"], seed=1)
    images = np.random.default_rng(2).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    result = attention_by_scale(model, images, mean, std, batch_size=7)
    units = dict(model.sk_units())
    assert (
        list(result["units"]) == list(units) == ["stages.0.0.sk", "stages.1.0.sk", "stages.2.0.sk"]
    )
    assert result["factors"] == [1.0, 1.5, 2.0] and result["n_images"] == 20
    for name, unit in result["units"].items():
        att = np.array(unit["mean_attention"])  # (F, M, C)
        channels = units[name].params["convs.0.weight"].data.shape[0]
        assert att.shape == (3, 2, channels)
        np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-6)
        diff = np.array(unit["channel_difference"])
        np.testing.assert_allclose(diff, att[:, 1] - att[:, 0])
        np.testing.assert_allclose(unit["mean_difference"], diff.mean(axis=1))
    # Batching does not change the average: one batch of 20 gives the same numbers.
    direct = mean_attention(model, images, mean, std, batch_size=20)
    first = np.array(result["units"]["stages.0.0.sk"]["mean_attention"])[0]
    np.testing.assert_allclose(direct["stages.0.0.sk"], first, atol=1e-6)
    # Nor does the backend the network runs on (in float32: equal to its rounding).
    assert model.backend == "fast"
    on_reference = mean_attention(model.set_backend("reference"), images, mean, std, batch_size=7)
    for name, value in on_reference.items():
        np.testing.assert_allclose(value, direct[name], atol=1e-5, err_msg=name)


def test_per_class_attention_is_each_class_alone_and_averages_to_the_whole():
    model = SKResNeXt(PRESETS["tiny"], seed=1)
    images = np.random.default_rng(2).integers(0, 256, (18, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 6)
    labels[:3] = 1  # class sizes 5, 8, 5, and none of class 3
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    per_class, counts = class_mean_attention(
        model, images, labels, mean, std, num_classes=4, batch_size=4
    )
    np.testing.assert_array_equal(counts, [5, 8, 5, 0])
    overall = mean_attention(model, images, mean, std)
    for k in range(3):
        alone = mean_attention(model, images[labels == k], mean, std)
        for name, value in alone.items():
            np.testing.assert_allclose(per_class[name][k], value, atol=1e-6, err_msg=name)
    for name, value in per_class.items():
        assert np.all(np.isnan(value[3]))  # a class without images has no mean
        weighted = np.einsum("kmc,k->mc", value[:3], counts[:3]) / counts.sum()
        np.testing.assert_allclose(weighted, overall[name], atol=1e-6)

    result = attention_by_scale(model, images, mean, std, labels=labels, num_classes=4)
    for name, unit in result["units"].items():
        by_class = np.array(unit["class_difference"])  # (F, K)
        assert by_class.shape == (3, 4)
        first = per_class[name][:3]  # factor 1.0 leaves the images as they are
        np.testing.assert_allclose(
            by_class[0, :3], (first[:, 1] - first[:, 0]).mean(axis=1), atol=1e-6
        )
        # The labels do not change the overall numbers.
        plain = attention_by_scale(model, images, mean, std)["units"][name]
        np.testing.assert_allclose(unit["mean_difference"], plain["mean_difference"], atol=1e-6)


def test_binned_and_last_units():
    values = np.arange(12.0).reshape(1, 12)
    np.testing.assert_array_equal(binned(values, 4), [[1.0, 4.0, 7.0, 10.0]])
    with pytest.raises(ValueError, match="12 channels do not split into 5 equal groups"):
        binned(values, 5)
    names = ["stages.0.0.sk", "stages.0.1.sk", "stages.1.0.sk", "stages.2.0.sk", "stages.2.1.sk"]
    assert last_units_of_stages(names) == ["stages.0.1.sk", "stages.1.0.sk", "stages.2.1.sk"]


def _fake_result(diffs, channels=32):
    """attention_by_scale's shape for one unit whose mean difference per factor is `diffs`."""
    dilated = np.array([np.full(channels, (1 + d) / 2) for d in diffs])  # a_d - a_p = d
    att = np.stack([1 - dilated, dilated], axis=1)  # (F, M, C)
    diff = att[:, 1] - att[:, 0]
    unit = {
        "channel_difference": diff.tolist(),
        "mean_difference": diff.mean(axis=1).tolist(),
        "mean_attention": att.tolist(),
        "class_difference": np.repeat(diff.mean(axis=1)[:, None], 10, axis=1).tolist(),
    }
    return {"factors": [1.0, 1.5, 2.0], "n_images": 1, "units": {"stages.0.0.sk": unit}}


def test_across_seeds_calls_a_change_a_trend_only_beyond_the_spread():
    steady = [_fake_result([0.0, 0.05, 0.10]), _fake_result([0.02, 0.06, 0.11])]
    summary = across_seeds(steady)
    unit = summary["units"]["stages.0.0.sk"]
    assert summary["seeds"] == 2
    np.testing.assert_allclose(unit["mean_difference"]["mean"], [0.01, 0.055, 0.105])
    np.testing.assert_allclose(unit["trend"]["per_seed"], [0.10, 0.09])
    assert unit["trend"]["is_a_trend"]
    assert np.array(unit["binned_dilated_attention"]["mean"]).shape == (3, 16)
    assert np.array(unit["class_difference"]["mean"]).shape == (3, 10)

    opposite = [_fake_result([0.0, 0.0, 0.10]), _fake_result([0.0, 0.0, -0.05])]
    assert not across_seeds(opposite)["units"]["stages.0.0.sk"]["trend"]["is_a_trend"]
    noisy = [_fake_result([0.0, 0, 0.01]), _fake_result([0.0, 0, 0.20])]
    trend = across_seeds(noisy)["units"]["stages.0.0.sk"]["trend"]
    assert trend["std"] > abs(trend["mean"]) / 2
    # One network has no spread, and no trend can be told from it.
    alone = across_seeds(steady[:1])["units"]["stages.0.0.sk"]
    assert alone["trend"]["std"] == 0 and not alone["trend"]["is_a_trend"]
    with pytest.raises(ValueError, match="networks of one shape"):
        across_seeds([steady[0], steady[0] | {"factors": [1.0, 2.0]}])


def test_analyze_command_writes_figures_and_numbers(tmp_path):
    fake = write_fake_cifar(tmp_path / "data", n=16)  # 80 training and 16 test images
    run_training(
        load_cifar10(fake.archive),
        tmp_path / "run",
        model_config=PRESETS["tiny"],
        config=TrainConfig(epochs=1, batch_size=32),
        progress=False,
    )
    out = tmp_path / "analysis"
    checkpoint = str(tmp_path / "run" / "checkpoint.npz")
    command = ["analyze", checkpoint, "--data", str(fake.archive)]
    result = subprocess.run(
        [sys.executable, "-m", "skscratch", *command, "--out", str(out), "--subset", "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    numbers = json.loads((out / "attention_by_scale.json").read_text())
    (network,) = numbers["networks"]
    assert network["n_images"] == 12 and len(network["units"]) == 3
    assert numbers["across_seeds"]["seeds"] == 1 and len(numbers["class_names"]) == 10
    for name in ("per_channel", "per_unit", "per_class", "per_channel_group"):
        assert (out / f"attention_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stages.2.0.sk" in result.stdout

    # Two checkpoints: their mean and spread, and a verdict on every unit's change.
    result = subprocess.run(
        [sys.executable, "-m", "skscratch", "analyze", checkpoint, checkpoint,
         "--data", str(fake.archive), "--out", str(out), "--subset", "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mean +- standard deviation of 2 networks" in result.stdout
    verdicts = result.stdout.count("  a trend") + result.stdout.count("within the spread")
    assert verdicts == 3  # one per unit
    numbers = json.loads((out / "attention_by_scale.json").read_text())
    assert numbers["checkpoints"] == [checkpoint, checkpoint]
