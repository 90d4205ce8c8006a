"""docs/distributed/train_ddp.py: a skscratch run continued in PyTorch on two processes (DDP on
gloo), and its weights back in skscratch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import _env, fake_cifar, write_archive

from skscratch.checkpoint import load_checkpoint
from skscratch.models import PRESETS
from skscratch.runs import load_run
from skscratch.train import TrainConfig, run_training

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "distributed" / "train_ddp.py"


def test_two_processes_continue_a_run_and_the_weights_come_back(tmp_path):
    data = fake_cifar(n_train=96, n_test=40)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", data)
    config = TrainConfig(epochs=1, batch_size=16, test_subset=40)
    run_training(data, tmp_path / "run", model_config=PRESETS["tiny"], config=config,
                 progress=False)  # fmt: skip
    start = tmp_path / "run" / "checkpoint.npz"

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), str(start), "--data", str(archive), "--epochs", "2", "--lr", "0.05",
         "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "the same weights on 2 processes" in result.stdout

    # skscratch reads the result as one of its own runs, with the weights trained further.
    before, _, _, _ = load_run(start)
    after, mean, std, after_config = load_run(tmp_path / "ddp" / "checkpoint.npz")
    assert after_config == config
    moved = [
        name
        for (name, p), (_, q) in zip(
            before.named_parameters(), after.named_parameters(), strict=True
        )
        if not np.array_equal(p.data, q.data)
    ]
    assert len(moved) == len(list(before.named_parameters()))
    meta = load_checkpoint(tmp_path / "ddp" / "checkpoint.npz")[0]
    assert meta["continued"] == {
        "in": "PyTorch DDP", "processes": 2, "epochs": 2, "lr": 0.05, "batch_size": 16
    }  # fmt: skip
    evaluate = subprocess.run(
        [sys.executable, "-m", "skscratch", "evaluate", str(tmp_path / "ddp" / "checkpoint.npz"),
         "--data", str(archive)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    assert evaluate.stdout.startswith("test accuracy ")
