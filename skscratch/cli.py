"""The command line: `python -m skscratch <command>` (also installed as `skscratch`): its
parser, how it reports errors, and `main`. What each command does is in skscratch.commands.

This is the entry point, so it is where process-wide settings are made: `main` calls
`skscratch.tuning.tune_process()` first, before anything loads NumPy (neither this module nor
skscratch.commands imports anything that does at the top; each command imports what it needs
when it runs).
"""

from __future__ import annotations

import argparse
import sys

from skscratch import commands, tuning
from skscratch._argtypes import factors, image_shape, positive, positive_float, positive_ints
from skscratch.backends import BACKENDS

TOLERANCE = 1e-6


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit status 2), pointing at --help instead of printing
    the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skscratch", description="Selective Kernel Networks from scratch in NumPy."
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="command", parser_class=_Parser
    )
    p = subparsers.add_parser(
        "gradcheck",
        help="check every operation's backward pass against finite differences",
        description="Check every operation's hand-written gradients against centred finite "
        "differences, in float64 on random shapes, and print a table.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for shapes and values")
    p.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="largest relative error that passes"
    )
    _backend_option(p, None, "check only this backend's pairs: reference or fast (default: both)")
    p.set_defaults(run=commands.gradcheck)

    from skscratch.models import PRESETS
    from skscratch.nn import ATTENTION_INITS
    from skscratch.recipe import FLIPS, RECIPES, SCHEDULES, TrainConfig

    defaults = TrainConfig()

    p = subparsers.add_parser(
        "train",
        help="train an SK-ResNeXt on CIFAR-10",
        description="Train an SK-ResNeXt on CIFAR-10 with SGD (Nesterov momentum, weight decay) "
        "and a warm-up + one-cycle or cosine schedule. Writes checkpoint.npz (after every "
        "epoch, and on Ctrl-C), metrics.jsonl and curves.png to --out.",
    )
    p.add_argument(
        "--data",
        help="cifar-10-python.tar.gz or its folder (default: "
        "$SKSCRATCH_DATA, then ~/.cache/skscratch, then download)",
    )
    p.add_argument("--out", default="runs/sknet", help="output folder (default: %(default)s)")
    p.add_argument(
        "--model",
        choices=sorted(PRESETS),
        default="default",
        help="network configuration (default: %(default)s)",
    )
    p.add_argument(
        "--attention-init",
        choices=ATTENTION_INITS,
        help="how the SK units' fc and select weights start: kaiming (normal, std "
        "sqrt(2/fan_in)) or official (normal, std 0.01) (default: the model's)",
    )
    p.add_argument(
        "--zero-init-residual",
        action=argparse.BooleanOptionalAction,
        help="start every block's last batch-norm scale at 0 (default: the model's)",
    )
    p.add_argument(
        "--branches",
        type=positive,
        help="branches M of every SK unit, dilations 1..M (default: the model's; 1 builds "
        "ResNeXt's block)",
    )
    p.add_argument(
        "--kernel-sizes",
        type=positive_ints,
        help="every SK unit's kernel size per branch, odd, e.g. 3,5 (default: the model's; 3 "
        "for every branch)",
    )
    p.add_argument(
        "--dilations",
        type=positive_ints,
        help="every SK unit's dilation per branch, e.g. 1,1 (default: the model's; 1..M)",
    )
    p.add_argument(
        "--attention",
        action=argparse.BooleanOptionalAction,
        help="--no-attention sums the branches instead of selecting among them, the paper's "
        "baseline without SK (default: the model's)",
    )
    recipes = "; ".join(
        f"{name}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        for name, options in RECIPES.items()
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help=f"a named set of the options below, which win where given as well ({recipes}; "
        "two-hours is the README's recorded run)",
    )
    p.add_argument("--epochs", type=positive, help=f"default: {defaults.epochs}, or the recipe's")
    p.add_argument(
        "--batch-size", type=positive, default=defaults.batch_size, help="default: %(default)s"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=defaults.lr,
        help="peak learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="default: %(default)s"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup_epochs,
        help="warm-up length in epochs (default: %(default)s)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=defaults.schedule,
        help="decay after warm-up (default: %(default)s)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=defaults.label_smoothing,
        help="train towards (1 - eps) * onehot + eps / 10 (default: %(default)s)",
    )
    p.add_argument(
        "--test-flips",
        action=argparse.BooleanOptionalAction,
        default=defaults.test_flips,
        help="after the last epoch, evaluate also on the mean logits of each test image and "
        "its mirror image (default: %(default)s)",
    )
    p.add_argument(
        "--test-shifts",
        action=argparse.BooleanOptionalAction,
        default=defaults.test_shifts,
        help="after the last epoch, evaluate also on the mean logits of every view of each test "
        "image (with --test-flips, it and its mirror) as it is and moved one pixel diagonally "
        "either way (default: %(default)s)",
    )
    p.add_argument(
        "--cutout",
        type=int,
        default=defaults.cutout,
        help="zero a random square of this side in each training image, 0 for none "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--flips",
        choices=FLIPS,
        help="training's flips: random (each image, each epoch) or alternate (each image's "
        "first at random, then reversed every epoch; Jordan 2024) (default: "
        f"{defaults.flips}, or the recipe's)",
    )
    p.add_argument(
        "--eval-every",
        type=positive,
        metavar="N",
        help="evaluate on the test images after every N-th epoch and the last "
        f"(default: {defaults.eval_every}, or the recipe's)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        help="processes that share every step, each on 1/N of the batch, each on one thread "
        "(skscratch.parallel; its batch norm sees its share) (default: "
        f"{defaults.workers}, or the recipe's)",
    )
    p.add_argument("--subset", type=positive, help="train on the first N training images")
    p.add_argument("--test-subset", type=positive, help="evaluate on the first N test images")
    p.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (its settings win)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _backend_option(
        p,
        "fast",
        "train with the plain-NumPy pairs (reference) or the compiled ones (fast) "
        "(default: %(default)s)",
    )
    p.set_defaults(run=commands.train)

    p = subparsers.add_parser(
        "evaluate",
        help="test accuracy of a checkpoint",
        description="Print the test accuracy of a checkpoint, overall and per class.",
    )
    p.add_argument("checkpoint", help="a checkpoint.npz written by skscratch train")
    p.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    p.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        help="average the logits of each image and its mirror image (default: as the run "
        "evaluated itself, its --test-flips)",
    )
    p.add_argument(
        "--shifts",
        action=argparse.BooleanOptionalAction,
        help="average the logits of every view as it is and moved one pixel diagonally either "
        "way (default: as the run evaluated itself, its --test-shifts)",
    )
    _backend_option(
        p,
        "fast",
        "run the plain-NumPy pairs (reference) or the compiled ones (fast) (default: %(default)s)",
    )
    p.set_defaults(run=commands.evaluate)

    p = subparsers.add_parser(
        "analyze",
        help="what the SK units select as objects grow (the paper's Section 4.5)",
        description="Enlarge the central object of the test images (1.0x, 1.5x, 2.0x), record "
        "every SK unit's attention per channel and per class, and write the attention "
        "difference (dilated minus plain branch) as figures (PNG) and numbers (JSON). Given "
        "several checkpoints (networks trained alike from different seeds), also their mean "
        "and spread, and which changes exceed the spread.",
    )
    p.add_argument("checkpoint", nargs="+", help="checkpoint.npz files written by skscratch train")
    p.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    p.add_argument("--out", default="analysis", help="output folder (default: %(default)s)")
    p.add_argument("--subset", type=positive, help="use the first N test images")
    p.add_argument(
        "--factors",
        type=factors,
        default=[1.0, 1.5, 2.0],
        help="enlargement factors (default: 1.0,1.5,2.0)",
    )
    _backend_option(
        p,
        "fast",
        "run the plain-NumPy pairs (reference) or the compiled ones (fast) (default: %(default)s)",
    )
    p.set_defaults(run=commands.analyze)

    p = subparsers.add_parser(
        "summary",
        help="a network's layers, output shapes, parameters and multiply-adds",
        description="Print every layer of a network (a preset, or the network of a "
        "checkpoint) with its output shape, parameters and multiply-adds per image, and the "
        "totals, counted from shapes alone (no forward pass).",
    )
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a checkpoint.npz")
    p.add_argument(
        "--input",
        type=image_shape,
        help="C x H x W of one image (default: 3x224x224 for the ImageNet stem, else 3x32x32)",
    )
    p.add_argument(
        "--depth",
        type=positive,
        help="one row per module at this depth of the name (3: one per block; default: every "
        "layer)",
    )
    p.set_defaults(run=commands.summary)

    p = subparsers.add_parser(
        "bench",
        help="time every operation, the SK unit and training steps (optionally against PyTorch)",
        description="Time each operation forward and backward by every path (NumPy reference, "
        "im2col, direct kernels), the SK unit, and whole training steps, and measure peak "
        "memory and first-call compile time. Medians after warm-up, float32. Takes a few "
        "minutes; --quick takes seconds (small shapes, to see that it works).",
    )
    p.add_argument(
        "--compare",
        choices=("torch",),
        help="also time an identical PyTorch network with the same weights, checked to agree",
    )
    p.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    p.add_argument("--repeats", type=positive, help="timed runs per benchmark (default: 7)")
    p.add_argument("--json", help="also write the results to this JSON file")
    _backend_option(p, None, "the backend whose operations and steps are timed (default: fast)")
    p.set_defaults(run=commands.bench)

    p = subparsers.add_parser(
        "assignment",
        help="make a student copy with functions to write, check one, or grade copies",
        description="make: copy skscratch with the bodies of the chosen exercises replaced by "
        "NotImplementedError (installable, with ASSIGNMENT.md and the visible checks). check: "
        "run the visible checks of a copy's functions. grade: run the hidden checks on a copy "
        "and print the points (--json: Gradescope's results.json). grade-all: grade every "
        "submission folder in a folder into one CSV.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="action", parser_class=_Parser)
    q = actions.add_parser("make", help="write a student copy to OUTDIR (new or empty)")
    q.add_argument("outdir")
    q.add_argument(
        "--exercises",
        help="comma-separated, in any order (default: all): im2col, conv, batchnorm, "
        "relu_pool_fc, branch_softmax, sk_unit, softmax_ce, gradient_checking",
    )
    q.add_argument("--points", help="a points table like skscratch/assignment/points.json")
    q.set_defaults(run=commands.assignment)
    q = actions.add_parser("check", help="run the visible checks (in a student copy)")
    q.add_argument("exercise", nargs="?", help="one exercise (default: the assignment's)")
    q.set_defaults(run=commands.assignment)
    for name, target, help in (
        ("grade", "copy", "grade the student copy in COPY"),
        ("grade-all", "folder", "grade every submission folder in FOLDER"),
    ):
        q = actions.add_parser(name, help=help)
        q.add_argument(target)
        if name == "grade":
            q.add_argument("--json", help="also write Gradescope's results.json to this file")
        else:
            q.add_argument("--csv", required=True, help="write one row per submission here")
        q.add_argument(
            "--exercises", help="grade these (default: those of each copy's assignment.json)"
        )
        q.add_argument("--points", help="a points table like skscratch/assignment/points.json")
        q.add_argument("--seed", type=int, default=0, help="seed of the hidden checks' inputs")
        q.add_argument("--time-limit", type=positive, help="seconds per exercise (default: 600)")
        q.add_argument("--memory", type=positive, help="MiB per exercise process (default: 4096)")
        q.set_defaults(run=commands.assignment)
    return parser


def _backend_option(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=default, help=help)


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors skscratch raises for what the user can fix: bad data, a damaged checkpoint,
    a run that cannot go on, a settings or usage mistake. Any other exception is a bug and
    keeps its traceback, even a ValueError (which NumPy raises too)."""
    from skscratch.checkpoint import CheckpointError
    from skscratch.data import DataError
    from skscratch.recipe import ConfigError
    from skscratch.runs import TrainingError

    errors = (commands.UsageError, DataError, CheckpointError, TrainingError, ConfigError)
    try:
        from skscratch.assignment import AssignmentError
    except ImportError:  # a student copy has no assignment tools
        return errors
    return (*errors, AssignmentError)


def main(argv: list[str] | None = None) -> int:
    # First, before NumPy loads: OpenBLAS reads its settings then (see skscratch.tuning).
    tuning.tune_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    user_errors = _user_errors()
    try:
        return args.run(args)
    except user_errors as exc:
        # Errors that the user can fix: one line, no traceback.
        print(f"skscratch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
