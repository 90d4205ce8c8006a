"""Data parallelism (skscratch.parallel): a step shared among processes is the step of their
shares' gradients averaged, and a run of several workers stops and resumes exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_train import (
    _env,
    assert_one_line_error,
    fake_cifar,
    interrupt_after,
    main,
    snapshot,
    write_archive,
)

from skscratch.losses import softmax_cross_entropy
from skscratch.models import PRESETS, SKResNeXt
from skscratch.optim import SGD
from skscratch.parallel import Team, WorkerError, shares
from skscratch.recipe import ConfigError, TrainConfig
from skscratch.train import train_step


@pytest.mark.parametrize(
    "batch, workers, sizes", [(128, 2, [64, 64]), (10, 3, [3, 4, 3]), (7, 1, [7])]
)
def test_shares_cover_the_batch_in_order(batch, workers, sizes):
    parts = shares(batch, workers)
    assert [p.stop - p.start for p in parts] == sizes
    assert parts[0].start == 0 and parts[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))


def _model():
    return SKResNeXt(PRESETS["tiny"], seed=3, backend="reference").astype(np.float64)


def _step_by_hand(model, optimizer, x, y, workers):
    """In this process: each share's gradient of its mean loss, weighted by its size, summed;
    then the SGD step. Returns (mean loss, correct)."""
    batch = len(x)
    total = [0.0] * len(model.parameters())
    loss_sum, correct = 0.0, 0
    for part in shares(batch, workers):
        logits = model.forward(x[part])
        loss, dlogits = softmax_cross_entropy(logits, y[part], smoothing=0.2)
        model.backward(dlogits, input_grad=False)
        n = part.stop - part.start
        total = [t + p.grad * n / batch for t, p in zip(total, model.parameters(), strict=True)]
        loss_sum += loss * n
        correct += int((logits.argmax(axis=1) == y[part]).sum())
    for p, g in zip(model.parameters(), total, strict=True):
        p.grad = g
    optimizer.step()
    return loss_sum / batch, correct


@pytest.mark.parametrize("workers", [2, 3])
def test_a_shared_step_applies_the_mean_of_the_shares_gradients(workers):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 32, 32))
    y = rng.integers(0, 10, 10)
    model, by_hand = _model(), _model()
    optimizer, optimizer_by_hand = SGD(model, lr=0.1), SGD(by_hand, lr=0.1)
    with Team(model, workers, batch_size=10, backend="reference") as team:
        # Twice: the helpers start the second step from the weights the first published.
        for _ in range(2):
            loss, correct = team.step(model, optimizer, x, y, smoothing=0.2)
            expected = _step_by_hand(by_hand, optimizer_by_hand, x, y, workers)
            assert loss == pytest.approx(expected[0], rel=1e-12) and correct == expected[1]
            for p, q in zip(model.parameters(), by_hand.parameters(), strict=True):
                np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-14)


def test_a_team_of_one_is_train_step():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)
    a, b = _model(), _model()
    with Team(a, 1, batch_size=4, backend="reference") as team:
        result = team.step(a, SGD(a, lr=0.1), x, y, smoothing=0.0)
    assert result == train_step(b, SGD(b, lr=0.1), x, y)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_failing_helper_is_reported_by_rank():
    model = _model()
    with Team(model, 2, batch_size=4, backend="reference") as team:
        x = np.zeros((4, 3, 32, 32))
        with pytest.raises(WorkerError, match="worker 1 failed"):
            team.step(model, SGD(model), x, np.array([0, 1, 2, 99]), smoothing=0.0)


@pytest.mark.parametrize("workers, batch", [(0, 8), (5, 8)])
def test_workers_must_leave_each_share_two_images(workers, batch):
    with pytest.raises(ConfigError, match="workers must be from 1 to half the batch size"):
        TrainConfig(workers=workers, batch_size=batch)


def test_the_command_refuses_too_many_workers(capsys, tmp_path):
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar())
    out = tmp_path / "run"
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, "--batch-size", "8",
                        "--workers", "5")  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "workers must be from 1 to half the batch size (4")
    assert not (out / "checkpoint.npz").exists()


def test_a_run_of_two_workers_stopped_and_resumed_is_the_uninterrupted_run(tmp_path):
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar())
    args = [sys.executable, "-m", "skscratch", "train", "--data", str(archive), "--model",
            "tiny", "--epochs", "2", "--batch-size", "8", "--test-subset", "20", "--seed", "4",
            "--workers", "2"]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = subprocess.run(
        [*args, "--out", str(whole), "--quiet"], capture_output=True, env=_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    stopped = subprocess.Popen(
        [*args, "--out", str(parts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        interrupt_after(stopped, 19)  # in the second epoch (15 steps each)
        stopped.communicate(timeout=120)
    finally:
        if stopped.poll() is None:
            stopped.kill()
    assert stopped.returncode == 130
    resumed = subprocess.run(
        [*args[:6], "--out", str(parts), "--resume", "--quiet"],
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    from skscratch.checkpoint import load_checkpoint

    (meta_a, state_a, _), (meta_b, state_b, _) = (
        load_checkpoint(d / "checkpoint.npz") for d in (whole, parts)
    )
    assert meta_a["train_config"]["workers"] == meta_b["train_config"]["workers"] == 2
    for key, value in state_a.items():
        np.testing.assert_array_equal(value, state_b[key], err_msg=key)
    drop = ("seconds", "images_per_second", "test_seconds", "elapsed_seconds")
    for a, b in zip(meta_a["history"], meta_b["history"], strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == {
            k: v for k, v in b.items() if k not in drop
        }
    assert snapshot(whole).keys() == snapshot(parts).keys()
