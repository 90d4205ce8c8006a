"""The attention-by-object-size experiment (skscratch.analysis, `skscratch analyze`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_data import write_fake_cifar

from skscratch.analysis import attention_by_scale, enlarge_center, mean_attention
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
    command = ["analyze", str(tmp_path / "run" / "checkpoint.npz"), "--data", str(fake.archive)]
    result = subprocess.run(
        [sys.executable, "-m", "skscratch", *command, "--out", str(out), "--subset", "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    numbers = json.loads((out / "attention_by_scale.json").read_text())
    assert numbers["n_images"] == 12 and len(numbers["units"]) == 3
    for name in ("attention_per_channel.png", "attention_per_unit.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stages.2.0.sk" in result.stdout
