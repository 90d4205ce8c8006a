"""Runs one exercise's programs on a student copy, in a process of its own, and writes what they
return; it judges nothing.

    python _worker.py STUDENT_DIR CASES RESULTS SECONDS_PER_CASE

CASES is the base name of the cases file (`_casefile.py`), which holds the inputs and options
but not the expected values: those stay with the grader, which alone decides what passes. For
each case i the worker writes RESULTS/i.npz and RESULTS/i.json: the program's results, or the
reason it stopped (it raised, took longer than its time limit, was not written yet). What the
student's code prints goes nowhere the grader reads; whatever it writes or returns can at most
be a wrong answer.

The student's package is imported from STUDENT_DIR. `skscratch.fast` (the compiled backend,
the instructor's code) cannot be imported here: the student's own functions are graded. This
file runs as a script, not as part of the package: its neighbours (`_programs.py`,
`_casefile.py`, `_compare.py`) are imported by their plain names from its own folder, before
the student copy goes on the path, so none can be replaced by a module of the student's.
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
from pathlib import Path

import numpy as np  # noqa: F401 - loaded before the student's code can shadow it
from _casefile import read_cases, write_result
from _compare import failure
from _programs import PROGRAMS


class NoFastBackend(importlib.abc.MetaPathFinder):
    """Refuses `skscratch.fast` and its modules: the grader grades the student's functions."""

    def find_spec(self, name, path=None, target=None):
        if name == "skscratch.fast" or name.startswith("skscratch.fast."):
            raise ImportError(
                f"{name} is not available in the grader: your own functions are graded, not "
                f"the compiled backend"
            )
        return None


class TimeLimit(BaseException):
    """A case ran past its time limit (a BaseException: student code catching Exception
    cannot swallow it)."""


def _raise_time_limit(signum, frame):
    raise TimeLimit


def _reason(exc: BaseException, seconds: int) -> str:
    return f"took longer than {seconds} s" if isinstance(exc, TimeLimit) else failure(exc)


def run(student_dir: str, cases_base: str, results_dir: str, seconds: int) -> None:
    cases, results = read_cases(Path(cases_base)), Path(results_dir)
    sys.meta_path.insert(0, NoFastBackend())
    sys.path.insert(0, student_dir)
    try:
        import skscratch

        here = os.path.realpath(os.path.dirname(skscratch.__file__))
        if not here.startswith(os.path.realpath(student_dir) + os.sep):
            raise ImportError(f"imported skscratch from {here}, not from the student copy")
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: nothing of the copy runs
        for i in range(len(cases)):
            write_result(results, i, None, f"importing the copy failed: {_reason(exc, seconds)}")
        return

    signal.signal(signal.SIGALRM, _raise_time_limit)
    for i, case in enumerate(cases):
        inputs = {name: value.copy() for name, value in case["inputs"].items()}
        got, error = None, None
        signal.alarm(seconds)
        try:
            got = PROGRAMS[case["program"]](inputs, dict(case["options"]))
        except BaseException as exc:  # noqa: BLE001 - any error in student code fails the case
            error = _reason(exc, seconds)
        finally:
            signal.alarm(0)
        try:
            write_result(results, i, got, error)
        except FileExistsError:
            pass  # a result was planted before this case ran: the grader fails it as such
        except (TypeError, ValueError) as exc:  # results that are not arrays of numbers
            write_result(results, i, None, f"returned something that is not an array ({exc})")


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
