"""The paper's ablation on CIFAR-10: SK units against their branches summed against one branch.

    python docs/ablation/run.py --data ../shared/data/cifar-10-python.tar.gz \
        --runs runs/ablation --epochs 6 --seeds 1 2 -- --flips alternate --eval-every 3
    python docs/ablation/run.py --runs runs/ablation --table

The first command trains the default network (or --model) three ways, with every other setting
the same (the default recipe, shortened to --epochs; options after `--` go to every `skscratch
train`): "SK" (the SK unit selects between its branches), "summed" (`--no-attention`: the
branches added with equal weight, the paper's baseline without selection) and "one branch"
(`--branches 1`: ResNeXt's block), once per seed, into RUNS/<options>-seed<s> (RUNS/default-seed<s>
for the network as it is). It runs two trainings at a time, each on one thread (on two cores
that trains more images per second than one run on two threads), and resumes any that stopped:
run it again to continue. The second prints a table of their parameters, multiply-adds and test
accuracies from their metrics.

`--study init` compares, the same way, the SK units' two initialisations of their attention
weights (official, N(0, 0.01^2) as the authors' code and the default, and `--attention-init
kaiming`). Both studies train the network as it is, so with the same RUNS they share those runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

STUDIES = {
    "ablation": {"SK": [], "summed": ["--no-attention"], "one branch": ["--branches", "1"]},
    "init": {"official": [], "kaiming": ["--attention-init", "kaiming"]},
}
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def name(options: list[str]) -> str:
    """A variant's folder name: its options to `skscratch train`, without dashes in front."""
    return "-".join(option.lstrip("-") for option in options) or "default"


def folder(runs: Path, options: list[str], seed: int) -> Path:
    return runs / f"{name(options)}-seed{seed}"


def history(path: Path) -> list[dict]:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line]


def train(args: argparse.Namespace) -> None:
    jobs = []
    for seed in args.seeds:
        for variant, options in STUDIES[args.study].items():
            out = folder(args.runs, options, seed)
            if len(history(out)) >= args.epochs:
                continue  # finished
            command = [sys.executable, "-m", "skscratch", "train", "--quiet", "--out", str(out)]
            if args.data is not None:
                command += ["--data", str(args.data)]
            if (out / "checkpoint.npz").is_file():
                command.append("--resume")  # its own settings win
            else:
                command += ["--model", args.model, "--epochs", str(args.epochs),
                            "--seed", str(seed), *options, *args.train_args]  # fmt: skip
            jobs.append((f"{variant}, seed {seed}", command))
    running: list[tuple[str, subprocess.Popen]] = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            name, command = jobs.pop(0)
            print(f"start: {name}", flush=True)
            running.append((name, subprocess.Popen(command, env=os.environ | ONE_THREAD)))
        name, proc = running.pop(0)
        if proc.wait() != 0:
            sys.exit(f"{name} failed (exit code {proc.returncode}); run this again to resume")
        print(f"done: {name}", flush=True)


def table(args: argparse.Namespace) -> None:
    from skscratch.runs import load_run
    from skscratch.summary import layers

    print("| variant | parameters | multiply-adds | seeds | test accuracy (plain) | "
          "with flips and shifts |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, options in STUDIES[args.study].items():
        runs = sorted(args.runs.glob(f"{name(options)}-seed*"))
        finished = [h for h in map(history, runs) if h and "test_accuracy_shifts" in h[-1]]
        if not finished:
            continue
        model, *_ = load_run(runs[0] / "checkpoint.npz", backend="reference")
        plain = np.array([h[-1]["test_accuracy"] for h in finished])
        tta = np.array([h[-1]["test_accuracy_shifts"] for h in finished])

        def cell(a: np.ndarray) -> str:
            each = ", ".join(f"{v:.2%}" for v in a)
            return f"{a.mean():.2%} ({each})"

        macs = sum(row.macs for row in layers(model))
        print(f"| {variant} | {model.num_parameters():,} | {macs / 1e6:.1f} M | "
              f"{len(finished)} | {cell(plain)} | {cell(tta)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the runs")
    parser.add_argument("--data", type=Path, help="cifar-10-python.tar.gz or its folder")
    parser.add_argument("--study", choices=sorted(STUDIES), default="ablation")
    parser.add_argument("--model", default="default", help="a preset (default: default)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    parser.add_argument("--table", action="store_true", help="print the table of the runs")
    parser.add_argument("train_args", nargs="*", help="after --: more options of skscratch train")
    args = parser.parse_args()
    if args.table:
        table(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
