"""ASSIGNMENT.md, the student copy's own instructions: what to write, how to install, check and
submit, and how it is graded."""

from __future__ import annotations

from skscratch.assignment.catalog import Exercise


def assignment_text(exercises: list[Exercise], points: dict[str, dict[str, float]]) -> str:
    """The text, with each exercise's points from the points table `points`."""
    lines = [
        "# Assignment: Selective Kernel Networks from scratch",
        "",
        "The folder `skscratch/` is a working copy of skscratch in which some functions are yours",
        "to write. Each raises `NotImplementedError` naming its exercise; the comments above it",
        "say what it computes, and the module's docstring gives the mathematics. Everything else",
        "works already, and once your functions are right a network trains on them as it is.",
        "",
        "## Exercises, in order",
        "",
        "| exercise | what | points | functions |",
        "| --- | --- | --- | --- |",
    ]
    for e in exercises:
        functions = ", ".join(f"`{m}: {f}`" for m, f in e.functions)
        total = sum(points[e.name].values())
        lines.append(f"| `{e.name}` | {e.title} | {total:g} | {functions} |")
    lines += [
        "",
        "## Install",
        "",
        "In this folder, with Python 3.10 or newer:",
        "",
        "    python -m venv .venv",
        "    . .venv/bin/activate            (on Windows: .venv\\Scripts\\activate)",
        "    pip install -e '.[plot]'",
        "",
        "`-e` installs the copy in place: every change you make to `skscratch/` takes effect at",
        "once. `assignment.json` lists the exercises of this assignment; leave it as it is.",
        "",
        "## Check your work",
        "",
        "    python -m skscratch assignment check            (every exercise of the assignment)",
        "    python -m skscratch assignment check conv       (one exercise)",
        "",
        "runs the visible checks: your forward passes against expected values stored in this",
        "copy, your backward passes against finite differences, each with what it tried and, if",
        "it fails, why (the wrong shape, NaN, the relative error and its limit). Then",
        "",
        "    python -m skscratch gradcheck --backend reference",
        "",
        "checks every backward pass of the copy against finite differences of its own forward",
        "pass, and names every exercise not written yet (a gradient check cannot tell a wrong",
        "forward pass from a right one: that is what the visible checks' expected values are",
        "for), and",
        "",
        "    python -m skscratch train --backend reference --model tiny --data PATH",
        "",
        "trains a small network on CIFAR-10 (PATH: `cifar-10-python.tar.gz` or its folder) on",
        "your functions end to end: if it learns, your functions work together. Plain NumPy is",
        "slow, hence the tiny model (`--subset N` and `--epochs N` shorten the run further).",
        "",
        "## Your functions and the fast backend",
        "",
        "Your functions are skscratch's reference path: plain NumPy, one operation per module.",
        "Beside it, `skscratch/fast/` holds compiled versions of the convolution, batch norm,",
        "ReLU and SK unit. A network runs one or the other, chosen where it is built:",
        '`SKResNeXt(config, backend="reference")` runs your functions end to end,',
        '`backend="fast"` the compiled ones in place of your convolution, batch norm, ReLU and',
        "SK unit. The default of `train`, `--backend fast`, therefore trains just as well",
        "whether or not you have written those four; the grader never uses the fast backend.",
        "",
        "## Submit",
        "",
        "Hand in this folder as your instructor asks (without `.venv`). It is graded as it is:",
        "your instructor runs `python -m skscratch assignment grade` on it.",
        "",
        "## Grading",
        "",
        "The grader runs hidden variants of the visible checks (other shapes, other random",
        "inputs) on your functions, each exercise in a process of its own with a time and a",
        "memory limit. A check earns its points in proportion to its cases that pass. A",
        "function that raises, returns the wrong shape or NaN, or runs too long fails that",
        "case with the reason.",
        "",
    ]
    return "\n".join(lines)
