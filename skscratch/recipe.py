"""How to train: the settings of a training run (`skscratch train`'s options), checked.

A run's checkpoint records them (`asdict`), and `TrainConfig.from_dict` reads them back, with
what a run did before a setting existed where its default has changed since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ConfigError(ValueError):
    """A training configuration with a value training cannot use."""


SCHEDULES = ("onecycle", "cosine")  # the learning-rate decays skscratch.optim.learning_rate knows
FLIPS = ("random", "alternate")  # how training mirrors its images (TrainConfig.flips)
# Named sets of settings (`skscratch train --recipe NAME`); an option given beside one wins.
# "two-hours" is the README's recorded run: 90.45% with test-time flips and shifts in 110 minutes
# on two cores.
RECIPES = {"two-hours": {"epochs": 50, "flips": "alternate", "eval_every": 4, "workers": 2}}


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the defaults are those of the command line (`skscratch train --help`)."""

    epochs: int = 46
    batch_size: int = 128
    lr: float = 0.2  # the peak of the schedule
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "onecycle"
    seed: int = 0
    subset: int | None = None  # train on the first `subset` training images
    test_subset: int | None = None  # evaluate on the first `test_subset` test images
    augment: bool = True  # random crops and flips
    # Flips drawn at random for every image every epoch, or each image's first flip drawn at
    # random and then alternated from epoch to epoch (skscratch.augmentation.alternating_flips).
    flips: str = "random"
    cutout: int = 0  # side of the square augment zeroes in each training image (0: none)
    label_smoothing: float = 0.2  # eps of skscratch.losses' label-smoothed targets
    # After the last epoch, evaluate also on the mean logits of each test image and its mirror
    # (every epoch's evaluation is on the images alone).
    test_flips: bool = True
    # ... and also on the mean over each of those views and the view moved one pixel diagonally
    # either way (skscratch.evaluation).
    test_shifts: bool = True
    # Evaluate on the test images after every `eval_every`-th epoch and after the last.
    eval_every: int = 1
    # Processes that share every step, each on 1/workers of the batch (skscratch.parallel).
    workers: int = 1

    def __post_init__(self):
        # Ranges as `not low <= x < high`: NaN fails every comparison, so it is refused too.
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size must be at least 2 (batch norm), got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise ConfigError(f"warm-up must not be negative, got {self.warmup_epochs} epochs")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 1 <= self.workers <= self.batch_size // 2:
            raise ConfigError(
                f"workers must be from 1 to half the batch size ({self.batch_size // 2}: every "
                f"worker's share needs 2 images for batch norm), got {self.workers}"
            )
        if not 0 <= self.cutout <= 32:
            raise ConfigError(f"cutout must be from 0 to 32 pixels, got {self.cutout}")
        if self.flips not in FLIPS:
            raise ConfigError(f"flips must be one of {FLIPS}, got {self.flips!r}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be at least 1, got {self.eval_every}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The configuration a checkpoint recorded (TypeError for an unknown key)."""
        return cls(**(_BEFORE_THE_FIELD | d))


# What a run whose checkpoint predates a field did, where the field's default now differs.
_BEFORE_THE_FIELD = {"label_smoothing": 0.0, "test_flips": False, "cutout": 0, "test_shifts": False}
