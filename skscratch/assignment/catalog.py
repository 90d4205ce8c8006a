"""The exercises of a course assignment: what each asks for, where it lives, and its checks.

Part of every student copy (`skscratch assignment check` reads it there too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "assignment.json"  # beside skscratch/ in a copy: the exercises it was made for
VISIBLE = "visible"  # skscratch/assignment/visible.npz and .json in a copy: the visible checks


class AssignmentError(ValueError):
    """Something the instructor or student can fix: an unknown exercise, an occupied folder, a
    folder that holds no student copy."""


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    functions: tuple[tuple[str, str], ...]  # (module file inside the package, function)
    checks: tuple[str, ...]  # what earns points; the points themselves are in points.json


EXERCISES = (
    Exercise(
        "im2col",
        "im2col and col2im",
        (("im2col.py", "im2col"), ("im2col.py", "col2im")),
        ("im2col", "col2im"),
    ),
    Exercise(
        "conv",
        "convolution forward and backward (grouped, strided, dilated)",
        (("conv.py", "conv2d_forward"), ("conv.py", "conv2d_backward")),
        ("forward", "backward", "backward without the input gradient"),
    ),
    Exercise(
        "batchnorm",
        "batch norm forward and backward, in training and in evaluation mode",
        (("batchnorm.py", "batchnorm_forward"), ("batchnorm.py", "batchnorm_backward")),
        ("forward, training", "forward, evaluation", "backward, training", "backward, evaluation"),
    ),
    Exercise(
        "relu_pool_fc",
        "ReLU, global average pool and fully connected backward",
        (
            ("activations.py", "relu_backward"),
            ("pooling.py", "global_avg_pool_backward"),
            ("linear.py", "linear_backward"),
        ),
        ("ReLU backward", "pool backward", "FC backward"),
    ),
    Exercise(
        "branch_softmax",
        "the softmax across branches, forward and backward",
        (
            ("activations.py", "branch_softmax_forward"),
            ("activations.py", "branch_softmax_backward"),
        ),
        ("forward", "backward"),
    ),
    Exercise(
        "sk_unit",
        "the SK unit: Split, Fuse, Select, forward and backward",
        (("sk.py", "sk_unit_forward"), ("sk.py", "sk_unit_backward")),
        ("forward", "forward, evaluation", "backward"),
    ),
    Exercise(
        "softmax_ce",
        "softmax cross-entropy, with label smoothing",
        (("losses.py", "softmax_cross_entropy"),),
        ("loss and gradient",),
    ),
    Exercise(
        "gradient_checking",
        "gradient checking: centred differences, float32, a planted bug, the ReLU kink",
        (
            ("exercises/gradient_checking.py", "centred_difference"),
            ("exercises/gradient_checking.py", "best_float32_step"),
            ("exercises/gradient_checking.py", "find_the_planted_bug"),
            ("exercises/gradient_checking.py", "relu_kink_entries"),
        ),
        ("centred difference", "float32 step", "planted bug", "ReLU kink"),
    ),
)
BY_NAME = {e.name: e for e in EXERCISES}


def parse_exercises(text: str | None) -> list[Exercise]:
    """'conv,batchnorm' -> those exercises in course order; None or 'all' -> all of them."""
    if text is None or text == "all":
        return list(EXERCISES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise AssignmentError(
            f"unknown exercise {', '.join(unknown) or repr(text)}; choose from {', '.join(BY_NAME)}"
        )
    return [e for e in EXERCISES if e.name in names]


def manifest_exercises(copy: Path) -> list[Exercise]:
    """The exercises the copy in `copy` was made for (its manifest), or all without one."""
    path = Path(copy) / MANIFEST
    if not path.exists():
        return list(EXERCISES)
    try:
        names = json.loads(path.read_text())["exercises"]
        return [BY_NAME[n] for n in BY_NAME if n in set(names)] or list(EXERCISES)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AssignmentError(f"{path} is not a manifest skscratch wrote: {exc}") from exc
