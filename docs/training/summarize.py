"""The README's tables of a run, from its metrics.jsonl.

    python docs/training/summarize.py docs/training/metrics.jsonl

prints, as Markdown, the test accuracy of every epoch with the time elapsed (training and the
evaluation after each epoch, summed over the run: the time a stopped run stood still before it
resumed does not count), and the best test accuracy reached within 10, 30, 60 and 120 minutes.
Every epoch's test accuracy is on the test images alone ("-" for an epoch the run did not
evaluate, with `--eval-every`); a run with test-time flips or shifts evaluated its last epoch
also with them, which the closing line gives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MINUTES = (10, 30, 60, 120)


def main(path: str) -> None:
    history = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    print("| epoch | train loss | train accuracy | test accuracy | learning rate | minutes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for h in history:
        test = f"{h['test_accuracy']:.2%}" if "test_accuracy" in h else "-"
        print(
            f"| {h['epoch']} | {h['train_loss']:.3f} | {h['train_accuracy']:.1%} | "
            f"{test} | {h['lr']:.3f} | {h['elapsed_seconds'] / 60:.1f} |"
        )
    print()
    print("| within | epochs done | best test accuracy so far |")
    print("| --- | --- | --- |")
    for minutes in MINUTES:
        done = [h for h in history if h["elapsed_seconds"] <= minutes * 60]
        tested = [h["test_accuracy"] for h in done if "test_accuracy" in h]
        best = f"{max(tested):.2%}" if tested else "-"
        print(f"| {minutes} min | {len(done)} | {best} |")
    last = history[-1]
    flips, shifts = last.get("test_accuracy_flips"), last.get("test_accuracy_shifts")
    print()
    print(
        f"{len(history)} epochs, {last['elapsed_seconds'] / 60:.1f} minutes, "
        f"{sum(h['seconds'] for h in history) / 60:.1f} of them training steps "
        f"({min(h['images_per_second'] for h in history):.0f}-"
        f"{max(h['images_per_second'] for h in history):.0f} images/s); "
        f"final test accuracy {last['test_accuracy']:.2%}"
        + ("" if flips is None else f", {flips:.2%} with test-time flips")
        + ("" if shifts is None else f", {shifts:.2%} with test-time shifts as well")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="a run's metrics.jsonl")
    main(parser.parse_args().metrics)
