"""The paper's ablations as network switches: the branches summed without attention, one branch
as ResNeXt's block, M = 3, and kernel sizes and dilations per branch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skscratch.losses import softmax_cross_entropy
from skscratch.models import PRESETS, BranchSum, SKResNeXt, count_macs
from skscratch.nn import SKUnit
from skscratch.summary import layers

TINY = PRESETS["tiny"]
# The paper's Table 3 compares 3x3 and 5x5 kernels (dilation 1) with the 3x3 of dilation 2.
KERNELS = {"kernel_sizes": (3, 5), "dilations": (1, 1)}


def _units(model):
    return [m for _, m in model.named_modules() if isinstance(m, (SKUnit, BranchSum))]


@pytest.mark.parametrize(
    "changes, kind, branches",
    [
        ({}, SKUnit, 2),
        ({"branches": 3}, SKUnit, 3),
        ({"attention": False}, BranchSum, 2),
        ({"branches": 1}, BranchSum, 1),
        ({"branches": 1, "attention": False}, BranchSum, 1),
    ],
)
def test_each_switch_builds_its_unit(changes, kind, branches):
    model = SKResNeXt(dataclasses.replace(TINY, **changes), backend="reference")
    units = _units(model)
    assert len(units) == 3 and all(type(u) is kind for u in units)
    names = {name for name, _ in model.named_parameters()}
    assert f"stages.0.0.sk.convs.{branches - 1}.weight" in names
    assert f"stages.0.0.sk.convs.{branches}.weight" not in names
    # Only the SK unit has the fuse and select layers.
    assert ("stages.0.0.sk.fc.weight" in names) == (kind is SKUnit)


def test_one_branch_of_sknet50_is_resnext50():
    """ResNeXt-50 (32x4d) has 25,028,904 parameters (torchvision's resnext50_32x4d) and about
    4.24 GFLOPs (the paper's Table 2)."""
    model = SKResNeXt(dataclasses.replace(PRESETS["sknet50"], branches=1), backend="reference")
    assert model.num_parameters() == 25_028_904
    assert 4.2e9 < sum(r.macs for r in layers(model, (3, 224, 224))) < 4.3e9


def test_without_attention_only_the_fuse_and_select_weights_go():
    sk = SKResNeXt(PRESETS["sknet50"], backend="reference")
    summed = SKResNeXt(
        dataclasses.replace(PRESETS["sknet50"], attention=False), backend="reference"
    )
    attention = sum(
        p.data.size
        for name, p in sk.named_parameters()
        if ".sk.fc" in name or ".sk.select" in name  # fc.weight, fc_bn.*, select.weight
    )
    assert summed.num_parameters() == sk.num_parameters() - attention


@pytest.mark.parametrize(
    "changes",
    [{"attention": False}, {"branches": 1}, {"branches": 3}, KERNELS,
     KERNELS | {"attention": False}],
)  # fmt: skip
def test_the_counter_agrees_with_a_forward_pass(changes):
    model = SKResNeXt(dataclasses.replace(TINY, **changes), backend="reference")
    rows = layers(model, (3, 32, 32))
    assert sum(r.params for r in rows) == model.num_parameters()
    assert sum(r.macs for r in rows) == count_macs(model)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize(
    "changes", [{"attention": False}, {"branches": 1}, KERNELS | {"attention": False}]
)
def test_the_summed_branches_backward_matches_finite_differences(changes, backend):
    model = SKResNeXt(dataclasses.replace(TINY, **changes), backend=backend).astype(np.float64)
    unit = _units(model)[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, unit.children["convs"][0].params["weight"].data.shape[0], 5, 5))
    dout = rng.standard_normal(unit.forward(x).shape)
    dx = unit.backward(dout)

    def f(x_):
        return (unit.forward(x_) * dout).sum()

    h, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (f(plus) - f(minus)) / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "changes", [{"attention": False}, {"branches": 1}, {"branches": 3}, KERNELS]
)
def test_each_ablation_trains_a_step(changes):
    model = SKResNeXt(dataclasses.replace(TINY, **changes))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    _, dlogits = softmax_cross_entropy(model.forward(x), rng.integers(0, 10, 4))
    model.backward(dlogits)
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attention", [True, False])
def test_kernel_sizes_and_dilations_reach_every_branch(attention):
    config = dataclasses.replace(TINY, kernel_sizes=(5, 3), dilations=(1, 2), attention=attention)
    model = SKResNeXt(config, backend="reference")
    for unit in _units(model):
        names = dict(unit.named_parameters())
        assert names["convs.0.weight"].data.shape[2:] == (5, 5)
        assert names["convs.1.weight"].data.shape[2:] == (3, 3)
    # Both branches keep the size: 5x5 padded by 2, 3x3 of dilation 2 padded by 2.
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert model.forward(x).shape == (2, 10)


@pytest.mark.parametrize(
    "changes, message",
    [({"kernel_sizes": (3,)}, "one value per branch"), ({"kernel_sizes": (3, 4)}, "odd"),
     ({"dilations": (1, 2, 3)}, "one value per branch"), ({"dilations": (0, 1)}, "at least 1"),
     ({"branches": 3, "kernel_sizes": (3, 5)}, "one value per branch")],
)  # fmt: skip
def test_a_configuration_with_wrong_branch_settings_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_the_ablation_script_trains_every_variant_and_tabulates_them(tmp_path):
    from test_train import _env, fake_cifar, write_archive

    script = Path(__file__).resolve().parents[1] / "docs" / "ablation" / "run.py"
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar())
    runs = tmp_path / "runs"
    train = [sys.executable, str(script), "--runs", str(runs), "--data", str(archive), "--model",
             "tiny", "--epochs", "1", "--seeds", "0", "--", "--batch-size", "8", "--subset",
             "32", "--test-subset", "20"]  # fmt: skip
    result = subprocess.run(train, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in runs.iterdir()) == [
        "branches-1-seed0", "default-seed0", "no-attention-seed0"
    ]  # fmt: skip
    # Run again: every run is finished, so nothing trains.
    again = subprocess.run(train, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0 and "start" not in again.stdout
    # The init study shares the network as it is ("official", the default) and trains only the
    # other initialisation.
    init = subprocess.run(
        [*train[:2], "--study", "init", *train[2:]], capture_output=True, text=True, env=_env(),
        timeout=600,
    )  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    assert [line for line in init.stdout.splitlines() if line.startswith("start")] == [
        "start: kaiming, seed 0"
    ]
    table = subprocess.run(
        [sys.executable, str(script), "--runs", str(runs), "--table"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    rows = table.stdout.strip().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["SK", "summed", "one branch"]
    params = [int(row.split("|")[2].strip().replace(",", "")) for row in rows]
    assert params[0] > params[1] > params[2]  # attention weights, then a branch, go
