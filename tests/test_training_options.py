"""Options of a run on a time budget: alternating flips (`--flips alternate`), evaluating only
every few epochs (`--eval-every N`), and the recipe that names them with the README's recorded
run (`--recipe two-hours`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import assert_one_line_error, fake_cifar, main, skscratch, write_archive

from skscratch.augmentation import alternating_flips, augment, training_batch
from skscratch.checkpoint import load_checkpoint
from skscratch.cli import build_parser
from skscratch.commands import train_config
from skscratch.recipe import ConfigError, TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
SUMMARIZE = DOCS / "training/summarize.py"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", fake_cifar())


# ---------------------------------------------------------------------------- alternating flips


def test_alternating_flips_reverse_every_image_from_one_epoch_to_the_next():
    first, second, third = (alternating_flips(10_000, seed=4, epoch=e) for e in range(3))
    assert np.all(first != second)  # every image shown the other way round
    np.testing.assert_array_equal(first, third)
    assert 0.48 < first.mean() < 0.52  # the first epoch's flips: a random half
    assert np.any(first != alternating_flips(10_000, seed=5, epoch=0))  # drawn from the seed


def test_augment_mirrors_exactly_the_images_it_is_told_to():
    x = np.random.default_rng(0).integers(0, 256, size=(6, 3, 5, 7), dtype=np.uint8)
    flips = np.array([True, False, False, True, True, False])
    out = augment(x, np.random.default_rng(1), pad=0, flips=flips)  # no crop: flips alone
    np.testing.assert_array_equal(out[flips], x[flips][..., ::-1])
    np.testing.assert_array_equal(out[~flips], x[~flips])


def test_augment_refuses_flips_of_another_length():
    x = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"one boolean per image \(4\), got shape \(3,\)"):
        augment(x, np.random.default_rng(0), flips=np.ones(3, dtype=bool))


def test_a_batch_with_alternating_flips_differs_from_random_flips_only_in_its_flips():
    x = fake_cifar().x_train
    idx = np.arange(40, 72)
    for epoch in (0, 1):
        random = training_batch(TrainConfig(), x, idx, epoch, 3)
        alternate = training_batch(TrainConfig(flips="alternate"), x, idx, epoch, 3)
        flips = alternating_flips(len(x), 0, epoch)[idx]
        rng = np.random.default_rng([0, 2, epoch, 3])  # the crops of random's batch 3
        np.testing.assert_array_equal(alternate, augment(x[idx], rng, flips=flips))
        assert not np.array_equal(alternate, random)


# ------------------------------------------------------------------------ evaluating every N


def test_a_run_evaluates_every_nth_epoch_and_the_last(capsys, tmp_path, archive):
    out = tmp_path / "run"
    code, stdout, err = main(
        capsys, "train", "--data", archive, "--out", out, "--model", "tiny", "--subset", "48",
        "--test-subset", "20", "--batch-size", "8", "--epochs", "3", "--eval-every", "2",
        "--flips", "alternate", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("test_accuracy" in h, "test_loss" in h) for h in history] == [
        (False, False), (True, True), (True, True),
    ]  # fmt: skip
    assert "test_accuracy_shifts" in history[2]  # the last epoch's test-time augmentation
    best = max(history[1]["test_accuracy"], history[2]["test_accuracy"])
    assert f"(best {best:.4f})" in stdout
    train_config = load_checkpoint(out / "checkpoint.npz")[0]["train_config"]
    assert train_config["eval_every"] == 2 and train_config["flips"] == "alternate"
    assert (out / "curves.png").stat().st_size > 0
    table = subprocess.run(
        [sys.executable, str(SUMMARIZE), str(out / "metrics.jsonl")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line for line in table.splitlines() if line.startswith("| 1 |")]
    assert rows and rows[0].split("|")[4].strip() == "-"  # epoch 1: not evaluated


def test_eval_every_on_the_log_line_of_an_epoch_not_evaluated(tmp_path, archive):
    result = skscratch(
        "train", "--data", archive, "--out", tmp_path / "run", "--model", "tiny", "--subset",
        "16", "--test-subset", "8", "--batch-size", "8", "--epochs", "2", "--eval-every", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = next(line for line in result.stdout.splitlines() if line.startswith("epoch 1: "))
    assert "test" not in first and first.endswith(" min")


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--eval-every", "0"), "must be at least 1"),
     (("--flips", "sideways"), "invalid choice: 'sideways'"),
     (("--recipe", "fast"), "invalid choice: 'fast' (choose from 'two-hours')")],
)  # fmt: skip
def test_wrong_options_are_one_line_errors(tmp_path, archive, args, message):
    out = tmp_path / "run"
    result = skscratch("train", "--data", archive, "--out", out, *args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("eval_every", 0, "eval_every must be at least 1, got 0"),
     ("flips", "both", "flips must be one of ('random', 'alternate'), got 'both'")],
)  # fmt: skip
def test_the_configuration_refuses_them_too(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{field: value})


def test_a_checkpoint_from_before_the_options_reads_as_random_flips_evaluated_every_epoch():
    old = {k: v for k, v in TrainConfig().__dict__.items() if k not in ("flips", "eval_every")}
    config = TrainConfig.from_dict(old)
    assert config.flips == "random" and config.eval_every == 1


# ------------------------------------------------------------------------------------ the recipe


def config_of(*argv: str) -> TrainConfig:
    """The TrainConfig `skscratch train ARGV` trains with."""
    return train_config(build_parser().parse_args(["train", *argv]))


def test_without_a_recipe_the_options_default_to_the_configuration_s_defaults():
    assert config_of() == TrainConfig()
    assert config_of("--epochs", "3", "--workers", "2") == TrainConfig(epochs=3, workers=2)


def test_the_two_hours_recipe_is_the_recorded_run_s_configuration():
    meta = load_checkpoint(DOCS / "training/checkpoint.npz")[0]
    recorded = TrainConfig.from_dict(meta["train_config"])
    assert config_of("--recipe", "two-hours") == recorded
    assert recorded != TrainConfig()  # the recipe is not the defaults


def test_options_given_beside_a_recipe_win():
    config = config_of("--recipe", "two-hours", "--epochs", "3", "--flips", "random")
    assert (config.epochs, config.flips) == (3, "random")
    assert (config.eval_every, config.workers) == (4, 2)  # the recipe's
