"""Training steps of one process against steps shared among several (`train --workers`).

    python docs/bench/workers.py [--model default] [--workers 2] [--steps 20] [--rounds 3]

Times training steps of batch 128 (random images, the fast backend) by one process with all
its threads, and by a team of `--workers` processes (skscratch.parallel), in alternating
rounds in this one process, after warm-up; prints each round's images per second and the
ratio of their medians. The machine is shared by both, so run it on an otherwise quiet one.
"""

from __future__ import annotations

import argparse
import time

import skscratch

skscratch.tune_process()  # as the command line does, before NumPy loads

import numpy as np  # noqa: E402

from skscratch.models import PRESETS, SKResNeXt  # noqa: E402
from skscratch.optim import SGD  # noqa: E402
from skscratch.parallel import Team  # noqa: E402


def images_per_second(team: Team, model, optimizer, x, y, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        team.step(model, optimizer, x, y, smoothing=0.2)
    return steps * len(x) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", choices=sorted(PRESETS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    model = SKResNeXt(PRESETS[args.model], backend="fast")
    optimizer = SGD(model, lr=0.01)
    figures = {1: [], args.workers: []}
    with Team(model, 1, 128, "fast") as alone, Team(model, args.workers, 128, "fast") as team:
        teams = {1: alone, args.workers: team}
        for t in teams.values():  # warm-up: compiled kernels loaded, memory pools filled
            images_per_second(t, model, optimizer, x, y, 3)
        for r in range(args.rounds):
            for workers, t in teams.items():
                t.publish(model)  # the steps of the other changed the weights
                figures[workers].append(images_per_second(t, model, optimizer, x, y, args.steps))
            print(
                f"round {r + 1}: 1 process {figures[1][-1]:.0f} images/s, {args.workers} "
                f"workers {figures[args.workers][-1]:.0f} images/s",
                flush=True,
            )
    one, many = np.median(figures[1]), np.median(figures[args.workers])
    print(
        f"{args.model}, batch 128: 1 process {one:.0f} images/s, {args.workers} workers "
        f"{many:.0f} images/s (medians of {args.rounds} rounds of {args.steps} steps): "
        f"{many / one:.2f}x"
    )


if __name__ == "__main__":
    main()
