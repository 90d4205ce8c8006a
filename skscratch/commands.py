"""What each command of the command line does: skscratch.cli parses the arguments and calls the
function of the same name, which returns the exit status.

A command imports what it needs when it runs, not at the top of this module: the command line
imports this module before it has tuned the process (skscratch.tuning), which must come before
anything loads NumPy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from skscratch.backends import BACKENDS
from skscratch.recipe import RECIPES, TrainConfig


class UsageError(Exception):
    """A command asked for something it cannot do as given (a missing optional dependency, an
    unwritable output path): the user can fix it, so it is reported in one line."""


def gradcheck(args: argparse.Namespace) -> int:
    """`skscratch gradcheck`: a table of every operation's gradient error; 1 if any fails."""
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


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The settings of `skscratch train`: its options, over the recipe's (--recipe), over the
    defaults."""
    given = {name: getattr(args, name) for name in ("epochs", "flips", "eval_every", "workers")}
    chosen = RECIPES.get(args.recipe, {}) | {k: v for k, v in given.items() if v is not None}
    return TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup,
        schedule=args.schedule,
        seed=args.seed,
        subset=args.subset,
        test_subset=args.test_subset,
        augment=not args.no_augment,
        label_smoothing=args.label_smoothing,
        test_flips=args.test_flips,
        test_shifts=args.test_shifts,
        cutout=args.cutout,
        **chosen,
    )


def train(args: argparse.Namespace) -> int:
    """`skscratch train`: train an SK-ResNeXt on CIFAR-10; 130 if stopped (it can resume)."""
    from skscratch.data import load_cifar10
    from skscratch.models import PRESETS, SKResNeXt, count_macs
    from skscratch.train import run_training

    config = train_config(args)
    data = load_cifar10(args.data)
    choices = (
        ("attention_init", args.attention_init),
        ("zero_init_residual", args.zero_init_residual),
        ("branches", args.branches),
        ("attention", args.attention),
        ("kernel_sizes", args.kernel_sizes),
        ("dilations", args.dilations),
    )
    try:
        model_config = dataclasses.replace(
            PRESETS[args.model], **{key: value for key, value in choices if value is not None}
        )
    except ValueError as exc:  # e.g. kernel sizes that are not one per branch
        raise UsageError(str(exc)) from exc
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
    last = history[-1]  # always evaluated, unlike epochs between evaluations (--eval-every)
    best = max(h["test_accuracy"] for h in history if "test_accuracy" in h)
    flips, shifts = last.get("test_accuracy_flips"), last.get("test_accuracy_shifts")
    print(
        f"done: final test accuracy {last['test_accuracy']:.4f} (best {best:.4f})"
        + ("" if flips is None else f", {flips:.4f} with test-time flips")
        + ("" if shifts is None else f", {shifts:.4f} with test-time shifts as well")
        + f"; results in {args.out}"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """`skscratch evaluate`: a checkpoint's test accuracy, overall and per class."""
    from skscratch import evaluation
    from skscratch.data import load_cifar10
    from skscratch.runs import load_run

    model, mean, std, config = load_run(args.checkpoint, backend=args.backend)
    # By default, as the run evaluated itself after its last epoch.
    flips = config.test_flips if args.flips is None else args.flips
    shifts = config.test_shifts if args.shifts is None else args.shifts
    data = load_cifar10(args.data)
    result = evaluation.evaluate(
        model, data.x_test, data.y_test, mean, std, flips=flips, shifts=shifts
    )
    views = " and ".join(how for how, used in (("flips", flips), ("shifts", shifts)) if used)
    print(
        f"test accuracy {result['accuracy']:.4f} on {len(data.y_test)} images "
        f"(loss {result['loss']:.4f}){f', with test-time {views}' if views else ''}"
    )
    for name, acc in zip(data.label_names, result["per_class_accuracy"], strict=True):
        print(f"  {name:<12} {acc:.4f}")
    return 0


def summary(args: argparse.Namespace) -> int:
    """`skscratch summary`: a network's layers with shapes, parameters and multiply-adds."""
    from skscratch import summary as counting
    from skscratch.models import PRESETS, SKNetConfig, SKResNeXt

    if args.model in PRESETS:
        config = PRESETS[args.model]
    elif args.model.endswith(".npz"):
        from skscratch.checkpoint import load_checkpoint

        config = SKNetConfig.from_dict(load_checkpoint(args.model)[0]["model_config"])
    else:
        raise UsageError(
            f"{args.model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint.npz"
        )
    shape = args.input or ((3, 224, 224) if config.stem_type == "imagenet" else (3, 32, 32))
    model = SKResNeXt(config, backend="reference")
    try:
        rows = counting.layers(model, shape, depth=args.depth)
    except ValueError as exc:
        raise UsageError(f"an input of {'x'.join(map(str, shape))} is too small: {exc}") from exc
    print(f"{args.model}, one image of {' x '.join(map(str, shape))}:")
    print(counting.table(rows))
    return 0


def analyze(args: argparse.Namespace) -> int:
    """`skscratch analyze`: how every SK unit's attention moves as objects grow, for one or more
    networks, printed and written to args.out as figures and JSON."""
    from skscratch import analysis
    from skscratch.data import load_cifar10
    from skscratch.runs import load_model

    data = load_cifar10(args.data)
    images, labels = data.x_test[: args.subset], data.y_test[: args.subset]
    factors = tuple(args.factors)
    results = []
    for path in args.checkpoint:
        model, mean, std = load_model(path, backend=args.backend)
        results.append(
            analysis.attention_by_scale(
                model,
                images,
                mean,
                std,
                labels=labels,
                num_classes=len(data.label_names),
                factors=factors,
            )  # fmt: skip
        )
    try:
        summary = analysis.across_seeds(results)
    except ValueError as exc:
        raise UsageError(f"{exc}: analyse checkpoints of one configuration together") from exc
    out = Path(args.out)
    written = [
        analysis.write_results(
            {
                "checkpoints": [str(p) for p in args.checkpoint],
                "class_names": list(data.label_names),
                "networks": results,
                "across_seeds": summary,
            },
            out,
        )
    ]
    figures = analysis.plot_results(results[0]) | {
        "attention_per_unit": analysis.plot_per_unit(summary),
        "attention_per_class": analysis.plot_per_class(summary, list(data.label_names)),
        "attention_per_channel_group": analysis.plot_binned_channels(summary),
    }
    for name, fig in figures.items():
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
    n = len(results)
    print(
        f"mean attention on the dilated branch minus the plain one, over {len(images)} test "
        f"images" + (f"; mean +- standard deviation of {n} networks:" if n > 1 else ":")
    )
    print(
        f"  {'SK unit':<18}" + "".join(f"{f:>16g}x" for f in factors) + "   change, first to last"
    )
    for name, unit in summary["units"].items():
        values = unit["mean_difference"]
        cells = "".join(
            f"{m:>+10.4f} +-{s:.3f}" for m, s in zip(values["mean"], values["std"], strict=True)
        )
        trend = unit["trend"]
        verdict = ""
        if n > 1:
            verdict = "  a trend" if trend["is_a_trend"] else "  within the spread"
        print(f"  {name:<18}{cells}   {trend['mean']:+.4f} +-{trend['std']:.4f}{verdict}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def bench(args: argparse.Namespace) -> int:
    """`skscratch bench`: time the operations and training steps and print a report."""
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


def assignment(args: argparse.Namespace) -> int:
    """`skscratch assignment make|check|grade|grade-all`: write a student copy, run its visible
    checks, or grade copies (1 unless everything passes)."""
    from skscratch import assignment as tools  # not `assignment`: that is this function

    if args.action == "check":
        return 1 if tools.check(args.exercise) else 0
    if not hasattr(tools, "make"):  # a student copy holds only the student's side
        raise UsageError(f"`assignment {args.action}` is for instructors: a student copy has no "
                         f"grader (`assignment check` runs the visible checks)")  # fmt: skip
    if args.action == "make":
        exercises = tools.parse_exercises(args.exercises)
        out = tools.make(args.outdir, exercises, points=tools.load_points(args.points))
        print(
            f"wrote a student copy with {len(exercises)} exercises to {out} "
            f"(see {out / 'ASSIGNMENT.md'})"
        )
        return 0
    points = tools.load_points(args.points)
    exercises = tools.parse_exercises(args.exercises) if args.exercises else None
    limits = {
        key: value
        for key, value in (("time_limit", args.time_limit), ("memory_mib", args.memory))
        if value is not None  # else grading's own defaults
    }
    if args.action == "grade-all":
        rows = tools.grade_folder(
            args.folder, args.csv, exercises=exercises, seed=args.seed, points=points, **limits
        )
        for row in rows:
            score = row.get("error") or f"{row['points']:.1f} of {row['max_points']:g}"
            print(f"{row['submission']}: {score}")
        print(f"wrote {args.csv}")
        return 0
    result = tools.grade(args.copy, exercises=exercises, seed=args.seed, points=points, **limits)
    print(tools.report(result))
    if args.json:
        from skscratch.checkpoint import atomic_write

        data = (json.dumps(tools.gradescope(result), indent=1) + "\n").encode()
        atomic_write(Path(args.json), lambda f: f.write(data))
        print(f"wrote {args.json}")
    return 0 if result.points == result.max_points else 1
