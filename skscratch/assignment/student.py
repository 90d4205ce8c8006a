"""`python -m skscratch assignment check [EXERCISE]`: the visible checks, run on your functions.

Each check runs your code on stored inputs (`visible.npz` beside this file, made with the copy)
and compares what it returns with the stored expected values: forward passes with independent
references, backward passes with finite differences of those references, so a forward pass that
is wrong with a backward pass that matches it does not pass. The grader runs hidden variants of
the same checks (other shapes, other random inputs).

In skscratch itself (not a student copy) there is no stored file: the checks are built from the
grader's references as they are needed.
"""

from __future__ import annotations

import time
from pathlib import Path

from skscratch.assignment._casefile import read_cases
from skscratch.assignment._compare import failure, judge
from skscratch.assignment._programs import PROGRAMS
from skscratch.assignment.catalog import BY_NAME, VISIBLE, AssignmentError, manifest_exercises

HERE = Path(__file__).resolve().parent
STORED = HERE / VISIBLE  # the visible checks a copy carries


def _visible_cases(names: list[str]) -> list[dict]:
    if Path(f"{STORED}.json").is_file():
        return [c for c in read_cases(STORED) if c["exercise"] in names]
    from skscratch.assignment import _cases  # skscratch itself: build them

    return [
        {"exercise": name, "check": c.check, "what": c.what, "program": c.program,
         "inputs": c.inputs, "options": c.options, "expected": c.expected, "source": c.source}
        for name in names
        for c in _cases.build(name, 0, hidden=False)
    ]  # fmt: skip


def check(exercise: str | None = None, *, out=print) -> int:
    """Run the visible checks of `exercise` (default: every exercise of the assignment), print
    one line per case and a summary per check; return the number of cases that failed."""
    if exercise is not None and exercise not in BY_NAME:
        raise AssignmentError(f"unknown exercise {exercise!r}; choose from {', '.join(BY_NAME)}")
    names = [exercise] if exercise else [e.name for e in manifest_exercises(HERE.parents[1])]
    failed = 0
    cases = _visible_cases(names)
    for name in names:
        out(f"{name}: {BY_NAME[name].title}")
        for check_name in BY_NAME[name].checks:
            mine = [c for c in cases if c["exercise"] == name and c["check"] == check_name]
            passed = 0
            for case in mine:
                reason = _run(case)
                passed += reason is None
                out(f"  {'ok  ' if reason is None else 'FAIL'} {case['what']}"
                    + ("" if reason is None else f"\n         {reason}"))  # fmt: skip
            failed += len(mine) - passed
            out(f"  -> {check_name}: {passed} of {len(mine)} passed")
    out("all visible checks pass" if not failed else f"{failed} visible checks fail")
    return failed


def _run(case: dict) -> str | None:
    inputs = {k: v.copy() for k, v in case["inputs"].items()}
    started = time.perf_counter()
    try:
        got = PROGRAMS[case["program"]](inputs, dict(case["options"]))
    except Exception as exc:  # noqa: BLE001 - a student's error is a failed check, with its reason
        return failure(exc)
    reason = judge(got, case["expected"], case["source"])
    seconds = time.perf_counter() - started
    if reason is None and seconds > 30:
        return f"right, but took {seconds:.0f} s: the grader stops a case after 60 s"
    return reason
