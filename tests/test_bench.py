"""`skscratch bench`: that it runs, reports every section, and refuses what it cannot do.

Only small shapes run here (`--quick`); the figures themselves are recorded in the README, from
a full run on a quiet machine. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from skscratch import bench, cli
from skscratch.bench.alone import _in_subprocess
from skscratch.bench.rows import DisagreementError, _agree, _check_twin


def _check_result(result: dict, frameworks: tuple[str, ...]) -> None:
    assert result["copy_bandwidth"] > 0
    for section in ("ops", "sk_unit", "steps"):
        assert result[section], section
        for row in result[section]:
            assert row["fast"] in row["times"]
            for name in frameworks:
                assert name == "skscratch" or name in row["times"], (section, row["name"])
            assert all(math.isfinite(t) and t > 0 for t in row["times"].values()), row
    paths = {p for row in result["ops"] for p in row["times"]}
    assert {"reference", "im2col", "direct", "fused"} <= paths
    for row in result["memory"]:
        for name in frameworks:
            assert row[name]["peak"] >= row[name]["before"] > 0
            assert math.isfinite(row[name]["step"]) and row[name]["step"] > 0
    assert result["compile"]["cold"] > 0 and result["compile"]["later"] > 0


def test_quick_bench_prints_every_section_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    headings = ("memory bandwidth", "operations", "SK unit", "training steps", "peak", "alone")
    for heading in headings:
        assert heading in printed
    assert "first training step in a new process" in printed
    result = json.loads(out.read_text())
    assert result["compare"] is None
    _check_result(result, ("skscratch",))


def test_quick_bench_against_torch_checks_and_times_both(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    # Timing a cold compile (a minute of compiling in fresh processes) does not involve PyTorch
    # and is checked above; here it is the warm measurement twice.
    monkeypatch.setattr(bench, "compile_times", _warm_compile_times)
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--compare", "torch", "--json", str(out)]) == 0
    assert "torch/skscratch" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["machine"]["torch_threads"] >= 1
    _check_result(result, ("skscratch", "torch"))


def _warm_compile_times() -> dict:
    warm = [_in_subprocess("first-step") for _ in range(2)]
    return {"cold": warm[0]["first"], "warm": warm[1]["first"], "later": warm[1]["second"]}


def test_disagreement_is_an_error_that_names_what_differs():
    _agree("same", np.ones(4), np.ones(4) * (1 + 1e-7))
    with pytest.raises(DisagreementError, match="conv forward: .* differ by 5.00e-01"):
        _agree("conv forward", np.ones(4), np.full(4, 2.0))


def test_a_twin_with_other_weights_is_caught():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    from skscratch.interop.torch import to_torch
    from skscratch.models import PRESETS, SKResNeXt

    model = SKResNeXt(PRESETS["tiny"])
    net = to_torch(model)
    with torch.no_grad():
        net.fc.bias += 1.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    with pytest.raises(DisagreementError, match="network output"):
        _check_twin(model, net, x, rng.integers(0, 10, 4))


def test_unwritable_json_path_is_refused_before_any_timing(tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--json", str(tmp_path / "missing" / "b.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "missing" in err


def test_compare_torch_without_torch_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch now fails
    assert cli.main(["bench", "--quick", "--compare", "torch"]) == 2
    assert "pip install torch" in capsys.readouterr().err
