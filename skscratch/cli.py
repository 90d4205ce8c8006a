"""The command line: `python -m skscratch <command>` (also installed as `skscratch`).

This is the entry point, so it is where process-wide settings are made: `main` calls
`skscratch.tuning.tune_process()` first, before anything loads NumPy (this module imports nothing
that does at the top; each command imports what it needs when it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from skscratch import tuning
from skscratch.backends import BACKENDS

TOLERANCE = 1e-6


class UsageError(Exception):
    """A command asked for something it cannot do as given (a missing optional dependency, an
    unwritable output path): the user can fix it, so it is reported in one line."""


def _gradcheck(args: argparse.Namespace) -> int:
    from skscratch.gradcheck import check_all_operations

    backends = BACKENDS if args.backend is None else (args.backend,)
    rows = check_all_operations(seed=args.seed, backends=backends)
    titles = ("backend", "operation", "input")
    labels = [(backend, operation, name or "-") for backend, operation, name, _, _ in rows]
    widths = [max(map(len, column)) for column in zip(titles, *labels, strict=True)]

    def line(cells: tuple[str, ...], error: str, result: str) -> str:
        padded = (f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True))
        return "  ".join([*padded, f"{error:>13}", result])

    print(line(titles, "max rel error", "result"))
    failed = 0
    for label, (*_, error, exercise) in zip(labels, rows, strict=True):
        if exercise is not None:  # a student copy's function that raised NotImplementedError
            failed += 1
            print(line(label, "", f"not written yet (exercise {exercise})"))
            continue
        ok = error < args.tolerance  # False for NaN
        failed += not ok
        print(line(label, f"{error:.2e}", "pass" if ok else "FAIL"))
    print(f"\n{len(rows) - failed} of {len(rows)} gradients within {args.tolerance:g} (float64)")
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from skscratch.data import load_cifar10
    from skscratch.models import PRESETS, SKResNeXt, count_macs
    from skscratch.train import TrainConfig, run_training

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup,
        schedule=args.schedule,
        seed=args.seed,
        subset=args.subset,
        test_subset=args.test_subset,
        augment=not args.no_augment,
    )
    data = load_cifar10(args.data)
    model_config = PRESETS[args.model]
    if args.resume:
        print(f"resuming the run in {args.out} on the {args.backend} backend")
    else:
        # Counted on the reference backend: the count is the same on both, and a forward pass
        # on the fast one would compile its kernels here, before the first step that reports it.
        model = SKResNeXt(model_config, backend="reference")
        print(
            f"model {args.model}: {model.num_parameters():,} parameters, "
            f"{count_macs(model) / 1e6:.1f} M multiply-adds per image, "
            f"on the {args.backend} backend"
        )
    try:
        history = run_training(
            data,
            args.out,
            model_config=model_config,
            config=config,
            resume=args.resume,
            progress=not args.quiet,
            backend=args.backend,
        )
    except KeyboardInterrupt:
        print(f"stopped; continue with: skscratch train --out {args.out} --resume")
        return 130
    best = max(h["test_accuracy"] for h in history)
    print(
        f"done: final test accuracy {history[-1]['test_accuracy']:.4f} (best {best:.4f}); "
        f"results in {args.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from skscratch.data import load_cifar10
    from skscratch.train import evaluate, load_model

    model, mean, std = load_model(args.checkpoint, backend=args.backend)
    data = load_cifar10(args.data)
    result = evaluate(model, data.x_test, data.y_test, mean, std)
    print(
        f"test accuracy {result['accuracy']:.4f} on {len(data.y_test)} images "
        f"(loss {result['loss']:.4f})"
    )
    for name, acc in zip(data.label_names, result["per_class_accuracy"], strict=True):
        print(f"  {name:<12} {acc:.4f}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from skscratch.analysis import attention_by_scale, plot_results, write_results
    from skscratch.data import load_cifar10
    from skscratch.train import load_model

    model, mean, std = load_model(args.checkpoint, backend=args.backend)
    data = load_cifar10(args.data)
    images = data.x_test[: args.subset]
    result = attention_by_scale(model, images, mean, std, factors=tuple(args.factors))
    written = [write_results(result, args.out)]
    for name, fig in plot_results(result).items():
        written.append(Path(args.out) / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
    print(
        f"mean attention on the dilated branch minus the plain one, over {len(images)} test images:"
    )
    print(f"  {'SK unit':<20}" + "".join(f"{f:>9g}x" for f in args.factors))
    for name, unit in result["units"].items():
        print(f"  {name:<20}" + "".join(f"{v:>+10.4f}" for v in unit["mean_difference"]))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from skscratch.bench import Settings, format_report, run

    if args.compare == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UsageError(
                "--compare torch needs PyTorch: pip install torch (the CPU build will do)"
            ) from None
    if args.json and not os.access(Path(args.json).resolve().parent, os.W_OK):
        # Found out now, not after minutes of timing.
        raise UsageError(f"cannot write {args.json}: its folder is missing or not writable")
    settings = Settings.quick() if args.quick else Settings.full()
    if args.repeats:
        settings = dataclasses.replace(settings, repeats=args.repeats)
    result = run(
        settings,
        compare=args.compare,
        backend=args.backend or "fast",
        progress=lambda s: print(s, file=sys.stderr),
    )
    print(format_report(result))
    if args.json:
        from skscratch.checkpoint import atomic_write

        data = json.dumps(result, indent=1).encode()
        atomic_write(Path(args.json), lambda f: f.write(data))
        print(f"wrote {args.json}")
    return 0


def _assignment(args: argparse.Namespace) -> int:
    try:
        from skscratch import assignment
    except ImportError as exc:  # in a student copy
        raise UsageError(str(exc)) from None
    if args.action == "make":
        exercises = assignment.parse_exercises(args.exercises)
        out = assignment.make(args.outdir, exercises)
        print(
            f"wrote a student copy with {len(exercises)} exercises to {out} "
            f"(see {out / 'ASSIGNMENT.md'})"
        )
        return 0
    results = assignment.grade(args.outdir, seed=args.seed)
    print(assignment.report(results))
    return 0 if all(r.passed == len(r.checks) for r in results) else 1


def _factors(value: str) -> list[float]:
    try:
        factors = [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1.0,1.5,2.0, got {value}") from exc
    if not factors or min(factors) < 1:
        raise argparse.ArgumentTypeError(f"factors must be at least 1, got {value}")
    return factors


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit status 2), pointing at --help instead of printing
    the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skscratch", description="Selective Kernel Networks from scratch in NumPy."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="command", parser_class=_Parser
    )
    p = commands.add_parser(
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
    p.set_defaults(run=_gradcheck)

    from skscratch.models import PRESETS
    from skscratch.train import SCHEDULES, TrainConfig

    defaults = TrainConfig()

    p = commands.add_parser(
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
    p.add_argument("--epochs", type=_positive, default=defaults.epochs, help="default: %(default)s")
    p.add_argument(
        "--batch-size", type=_positive, default=defaults.batch_size, help="default: %(default)s"
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
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
    p.add_argument("--subset", type=_positive, help="train on the first N training images")
    p.add_argument("--test-subset", type=_positive, help="evaluate on the first N test images")
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
    p.set_defaults(run=_train)

    p = commands.add_parser(
        "evaluate",
        help="test accuracy of a checkpoint",
        description="Print the test accuracy of a checkpoint, overall and per class.",
    )
    p.add_argument("checkpoint", help="a checkpoint.npz written by skscratch train")
    p.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    _backend_option(
        p,
        "fast",
        "run the plain-NumPy pairs (reference) or the compiled ones (fast) (default: %(default)s)",
    )
    p.set_defaults(run=_evaluate)

    p = commands.add_parser(
        "analyze",
        help="what the SK units select as objects grow (the paper's Section 4.5)",
        description="Enlarge the central object of the test images (1.0x, 1.5x, 2.0x), record "
        "every SK unit's attention per channel, and write the attention difference (dilated "
        "minus plain branch) as figures (PNG) and numbers (JSON).",
    )
    p.add_argument("checkpoint", help="a checkpoint.npz written by skscratch train")
    p.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    p.add_argument("--out", default="analysis", help="output folder (default: %(default)s)")
    p.add_argument("--subset", type=_positive, help="use the first N test images")
    p.add_argument(
        "--factors",
        type=_factors,
        default=[1.0, 1.5, 2.0],
        help="enlargement factors (default: 1.0,1.5,2.0)",
    )
    _backend_option(
        p,
        "fast",
        "run the plain-NumPy pairs (reference) or the compiled ones (fast) (default: %(default)s)",
    )
    p.set_defaults(run=_analyze)

    p = commands.add_parser(
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
    p.add_argument("--repeats", type=_positive, help="timed runs per benchmark (default: 7)")
    p.add_argument("--json", help="also write the results to this JSON file")
    _backend_option(p, None, "the backend whose operations and steps are timed (default: fast)")
    p.set_defaults(run=_bench)

    p = commands.add_parser(
        "assignment",
        help="make a student copy with functions to write, or grade one",
        description="make: copy skscratch with the bodies of the chosen exercises replaced by "
        "NotImplementedError, plus ASSIGNMENT.md. grade: check every exercise of a student "
        "copy against independent references and finite differences, and print the points.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="action", parser_class=_Parser)
    q = actions.add_parser("make", help="write a student copy to OUTDIR (new or empty)")
    q.add_argument("outdir")
    q.add_argument(
        "--exercises",
        help="comma-separated, in any order (default: all): im2col, conv, batchnorm, "
        "relu_pool_fc, branch_softmax, sk_unit, softmax_ce, gradient_checking",
    )
    q.set_defaults(run=_assignment)
    q = actions.add_parser("grade", help="grade the student copy in OUTDIR")
    q.add_argument("outdir")
    q.add_argument("--seed", type=int, default=0, help="random seed of the checks' inputs")
    q.set_defaults(run=_assignment)
    return parser


def _backend_option(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=default, help=help)


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors skscratch raises for what the user can fix: bad data, a damaged checkpoint,
    a run that cannot go on, a settings or usage mistake. Any other exception is a bug and
    keeps its traceback, even a ValueError (which NumPy raises too)."""
    from skscratch.checkpoint import CheckpointError
    from skscratch.data import DataError
    from skscratch.train import ConfigError, TrainingError

    errors = (UsageError, DataError, CheckpointError, TrainingError, ConfigError)
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
